"""Clips/s of the DALI loader vs the reference loader (webdataset + PyAV workers) on the same shards.

    python benchmarks/loader_throughput.py --work /tmp/loader-bench            # CPU: VP9 and MJPEG, 2 cores
    python benchmarks/loader_throughput.py --work /tmp/lb --device cuda --codecs h264 --reference-workers 16

Shards are synthetic Something-Something v2 clips (pipeline/synth.py) written by pipeline/shard.py with short
side 256; the loaders run the training plan (T segments, TSM multi-scale crop to 224, flip) and the figure
is clips per second over whole epochs after the first batch (pipeline build and worker start-up excluded;
reported separately). Each loader is given the same number of cores (DALI threads = reference workers).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from pipeline import cli

import torch

from pipeline.loader import build_loader
from pipeline.synth import synthesize_and_shard


def make_shards(work: Path, codec: str, args: argparse.Namespace) -> Path:
    return synthesize_and_shard("sthv2", work, codec=codec, short_side=256, splits="train", shard_size=16,
                                workers=os.cpu_count() or 1, classes=args.classes,
                                clips_per_class=args.clips_per_class, num_frames=args.num_frames,
                                width=args.width, height=args.height)


def measure(shards: Path, backend: str, threads: int, args: argparse.Namespace) -> dict:
    loader = build_loader(shards, split="train", mode="train", batch_size=args.batch_size,
                          num_segments=args.num_segments, crop_size=224, scale_size=256, seed=0,
                          backend=backend, device=args.device, num_threads=threads, flip=True)
    start = time.perf_counter()
    first = None
    clips = 0
    for epoch in range(args.epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if first is None:
                first = time.perf_counter()
                continue
            clips += len(batch["keys"])
    end = time.perf_counter()
    loader.close()
    return {"backend": backend, "threads": threads, "clips": clips, "seconds": round(end - first, 3),
            "clips_per_s": round(clips / (end - first), 1), "startup_s": round(first - start, 3)}


@cli.tool("benchmarks/loader_throughput.py")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/loader_throughput.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="folder for the raw clips and shards (reused)")
    p.add_argument("--codecs", default="vp9,mjpeg", help="comma-separated (h264 needs --device cuda for DALI)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda[:N] for DALI 'mixed' (NVDEC)")
    p.add_argument("--threads", type=int, default=2, help="DALI CPU threads (default 2)")
    p.add_argument("--reference-workers", type=int, default=None, help="DataLoader workers (default --threads)")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--clips-per-class", type=int, default=16, help="half of them land in the train split")
    p.add_argument("--num-frames", type=int, default=48)
    p.add_argument("--width", type=int, default=340)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-segments", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    workers = args.reference_workers or args.threads
    results = []
    for codec in args.codecs.split(","):
        shards = make_shards(args.work, codec, args)
        dali = measure(shards, "dali", args.threads, args)
        ref = measure(shards, "reference", workers, args)
        row = {"codec": codec, "device": args.device, "dali": dali, "reference": ref,
               "speedup": round(dali["clips_per_s"] / ref["clips_per_s"], 2)}
        results.append(row)
        print(f"{codec:6s} DALI {dali['clips_per_s']:7.1f} clips/s ({args.threads} threads)  reference "
              f"{ref['clips_per_s']:7.1f} clips/s ({workers} workers)  speedup {row['speedup']:.2f}x  "
              f"[{dali['clips']} clips after the first batch; start-up {dali['startup_s']}s / {ref['startup_s']}s]",
              flush=True)
    if args.out:
        meta = {"machine": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                "command": " ".join(sys.argv)}
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
