"""Clips/s of the DALI loader vs the reference loader (webdataset + PyAV workers) on the same shards.

    python benchmarks/loader_throughput.py --work /tmp/loader-bench            # CPU: VP9 and MJPEG, 2 cores
    python benchmarks/loader_throughput.py --work /tmp/lb --device cuda --codecs h264 --reference-workers 16
    python benchmarks/loader_throughput.py --work /tmp/lb --checks on,off --repeat 3   # cost of the CRC-32 checks

Shards are synthetic Something-Something v2 clips (pipeline/synth.py) written by pipeline/shard.py with short
side 256; the loaders run the training plan (T segments, TSM multi-scale crop to 224, flip) and the figure
is clips per second over whole epochs after the first batch (pipeline build and worker start-up excluded;
reported separately), the median of `--repeat` runs. Three loaders run side by side at the same number of
cores, counted as the processes and threads that do the work: DALI in batch mode (`--threads` decode
threads; its feed runs on the main thread, like the reference loader's collation), DALI with the parallel
external source (`--py-workers` reader processes + the rest of `--threads` as decode threads), and the
reference loader (`--reference-workers` DataLoader workers, default `--threads`).
`--checks on,off` measures every loader with and without the per-member CRC-32 check (ShardSet.verify_members),
alternating the two `--repeat` times and keeping each one's median run, and reports what the check costs; since
a few per cent drown in the noise of a shared machine, it also times the CRC-32 alone over the split's members
and states it as a share of the cores' time at the measured rate.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import zlib
from pathlib import Path

from pipeline import cli

import torch

from pipeline.loader import build_loader
from pipeline.shard_set import ShardSet
from pipeline.synth import synthesize_and_shard


def make_shards(work: Path, codec: str, args: argparse.Namespace) -> Path:
    return synthesize_and_shard("sthv2", work, codec=codec, short_side=256, splits="train", shard_size=16,
                                workers=os.cpu_count() or 1, classes=args.classes,
                                clips_per_class=args.clips_per_class, num_frames=args.num_frames,
                                width=args.width, height=args.height)


def measure(shards: Path, backend: str, threads: int, args: argparse.Namespace, checks: bool = True,
            py_workers: int = 0) -> dict:
    loader = build_loader(shards, split="train", mode="train", batch_size=args.batch_size,
                          num_segments=args.num_segments, crop_size=224, scale_size=256, seed=0,
                          backend=backend, device=args.device, num_threads=threads, flip=True, py_workers=py_workers)
    loader.shards.verify_members = checks     # off only to measure what the check costs
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
    return {"backend": backend, "threads": threads, "py_workers": py_workers, "cores": threads + py_workers,
            "checks": checks, "clips": clips,
            "seconds": round(end - first, 3), "clips_per_s": round(clips / (end - first), 1),
            "startup_s": round(first - start, 3)}


def medians(shards: Path, loaders: dict[str, tuple[str, int, int]], args: argparse.Namespace
            ) -> dict[str, dict[str, dict]]:
    """loader name -> checks setting ('on'/'off') -> its median of `--repeat` runs. Loaders and settings
    alternate run by run, so that a burst of foreign load hits them alike. ``loaders``: name -> (backend,
    threads, python workers)."""
    runs = {name: {c: [] for c in args.checks.split(",")} for name in loaders}
    for _ in range(args.repeat):
        for name, (backend, threads, py_workers) in loaders.items():
            for setting in runs[name]:
                runs[name][setting].append(measure(shards, backend, threads, args, checks=setting == "on",
                                                   py_workers=py_workers))
    return {name: {setting: {**sorted(rs, key=lambda r: r["clips_per_s"])[len(rs) // 2],
                             "every_run": [r["clips_per_s"] for r in rs]} for setting, rs in by_check.items()}
            for name, by_check in runs.items()}


def crc_seconds_per_clip(shards: Path) -> tuple[float, float]:
    """(seconds of zlib.crc32 per clip over all its members, mean bytes per clip), best of 5 passes."""
    files = ShardSet(shards, "train")
    members = []
    for shard, size in enumerate(files.shard_sizes):
        with open(files.files[shard].path, "rb") as fh:
            for entry in files.members(shard):
                parts = []
                for offset, length in entry.values():
                    fh.seek(offset)
                    parts.append(fh.read(length))
                members.append(parts)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        for parts in members:
            for data in parts:
                zlib.crc32(data)
        best = min(best, time.perf_counter() - start)
    return best / len(members), sum(len(d) for parts in members for d in parts) / len(members)


def crc_share(shards: Path, runs: dict[str, dict]) -> dict:
    """The CRC-32's own time per clip, and its share of the loaders' cores at their measured rates."""
    crc_s, size = crc_seconds_per_clip(shards)
    shares = {name: round(100 * crc_s * r["clips_per_s"] / r["cores"], 3) for name, r in runs.items()}
    return {"us_per_clip": round(crc_s * 1e6, 1), "bytes_per_clip": round(size),
            "gb_per_s": round(size / crc_s / 1e9, 2), "share_of_cores": shares}


def check_cost(best: dict[str, dict]) -> str:
    if set(best) != {"on", "off"}:
        return ""
    on, off = best["on"]["clips_per_s"], best["off"]["clips_per_s"]
    return (f" [CRC-32 checks: median {on:.1f} vs {off:.1f} clips/s without, cost {100 * (off - on) / off:+.1f} %; "
            f"every run: on {best['on']['every_run']}, off {best['off']['every_run']}]")


@cli.tool("benchmarks/loader_throughput.py")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/loader_throughput.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="folder for the raw clips and shards (reused)")
    p.add_argument("--codecs", default="vp9,mjpeg", help="comma-separated (h264 needs --device cuda for DALI)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda[:N] for DALI 'mixed' (NVDEC)")
    p.add_argument("--threads", type=int, default=2, help="DALI CPU threads (default 2)")
    p.add_argument("--py-workers", type=int, default=1,
                   help="DALI parallel source: worker processes, taken from --threads (default 1: 1 thread + 1 worker)")
    p.add_argument("--reference-workers", type=int, default=None, help="DataLoader workers (default --threads)")
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--clips-per-class", type=int, default=16, help="half of them land in the train split")
    p.add_argument("--num-frames", type=int, default=48)
    p.add_argument("--width", type=int, default=340)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-segments", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--checks", default="on", choices=("on", "off", "on,off", "off,on"),
                   help="per-member CRC-32 checks: on (default), off, or both side by side (on,off)")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs of each loader and checks setting, alternating; the median kept")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    workers = args.reference_workers or args.threads
    results = []
    first = args.checks.split(",")[0]
    par_threads = max(1, args.threads - args.py_workers)
    for codec in args.codecs.split(","):
        shards = make_shards(args.work, codec, args)
        runs = medians(shards, {"dali": ("dali", args.threads, 0),
                                "dali_parallel": ("dali", par_threads, args.py_workers),
                                "reference": ("reference", workers, 0)}, args)
        chosen = {name: r[first] for name, r in runs.items()}
        ref = chosen["reference"]
        row = {"codec": codec, "device": args.device, **chosen,
               "speedup": {name: round(r["clips_per_s"] / ref["clips_per_s"], 2) for name, r in chosen.items()
                           if name != "reference"}, "checks": runs}
        results.append(row)
        print(f"{codec:6s} reference {ref['clips_per_s']:7.1f} clips/s ({workers} workers) {ref['every_run']}; "
              f"start-up {ref['startup_s']}s; checks {first}", flush=True)
        for name in ("dali", "dali_parallel"):
            r = chosen[name]
            print(f"{codec:6s} {name:13s} {r['clips_per_s']:7.1f} clips/s ({r['threads']} threads + {r['py_workers']} "
                  f"workers) {r['every_run']}  speedup {row['speedup'][name]:.2f}x  [{r['clips']} clips after the "
                  f"first batch; start-up {r['startup_s']}s]", flush=True)
        for name, by_check in runs.items():
            if check_cost(by_check):
                print(f"{codec:6s} {name}{check_cost(by_check)}", flush=True)
        if "on" in runs["dali"]:
            row["crc32"] = crc_share(shards, {name: by_check["on"] for name, by_check in runs.items()})
            c = row["crc32"]
            shares = " / ".join(f"{v:.2f} % ({k})" for k, v in c["share_of_cores"].items())
            print(f"{codec:6s} CRC-32 alone: {c['us_per_clip']:.0f} us per clip ({c['bytes_per_clip'] / 1e3:.0f} kB, "
                  f"{c['gb_per_s']:.2f} GB/s) = {shares} of the cores' time at the rates above", flush=True)
    if args.out:
        meta = {"machine": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                "command": " ".join(sys.argv)}
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
