"""What DALI's video decoder costs per clip depending on which frames are asked for: does it seek to the
keyframe before a requested frame, or decode every frame from the start of the clip?

    python benchmarks/dali_decode_position.py --work /tmp/loader-bench            # CPU, VP9 and MJPEG
    python benchmarks/dali_decode_position.py --work /tmp/lb --device cuda --codecs h264

Shards made by benchmarks/loader_throughput.py's ``make_shards`` (synthetic Something-Something v2 clips, short
side 256, 48 frames, a keyframe every 8 frames; the same --work folder serves both), read back into memory; every clip of the train split goes through a
decode-only pipeline (``fn.decoders.video`` with ``frames=...``, as pipeline/dali_loader.py calls it) once
per frame set. CPU: the figure is the process's CPU time per clip (user + system over all threads), so
the number of decode threads does not change it; with ``--device cuda`` wall time per clip. A decoder that
seeks costs about the same for frame 40 as for frame 0; one that decodes from the start costs in proportion
to the position. Prints a table; ``--json`` one object.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from pipeline import cli

import numpy as np

from loader_throughput import make_shards      # benchmarks/ is on the path when run as a script
from pipeline.dali_loader import PAD_MODE, require_dali
from pipeline.shard_set import ShardSet

FRAME_SETS = {"frame 0": [0], "frame 8": [8], "frame 24": [24], "frame 40": [40], "frame 47": [47],
              "8 frames 0-7": list(range(8)), "8 frames 40-47": list(range(40, 48)),
              "TSN 8 of 48 (train view)": [3, 9, 15, 21, 27, 33, 39, 45]}


def core_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_clip_ms(clips: list[np.ndarray], frames: list[int], args: argparse.Namespace, build_index: bool) -> float:
    from nvidia.dali import fn, pipeline_def
    gpu = args.device.startswith("cuda")

    @pipeline_def(batch_size=args.batch_size, num_threads=args.threads, prefetch_queue_depth=1,
                  device_id=int(args.device.partition(":")[2] or 0) if gpu else None)
    def decode_only():
        encoded = fn.external_source(name="encoded")
        wanted = fn.external_source(name="frames")
        return fn.decoders.video(encoded, device="mixed" if gpu else "cpu", frames=wanted, pad_mode=PAD_MODE,
                                 build_index=build_index)

    pipe = decode_only()
    pipe.build()
    wanted = np.array(frames, np.int32)
    batches = [clips[i:i + args.batch_size] for i in range(0, len(clips) - args.batch_size + 1, args.batch_size)]
    clock = time.perf_counter if gpu else core_seconds
    start = clock()
    for batch in batches:
        pipe.feed_input("encoded", batch)
        pipe.feed_input("frames", [wanted] * len(batch))
        pipe.run()
    return 1000 * (clock() - start) / (len(batches) * args.batch_size)


def measure(codec: str, args: argparse.Namespace) -> dict:
    files = ShardSet(make_shards(args.work, codec, args), "train")
    clips = [np.frombuffer(files.read(shard, index)[1], np.uint8)
             for shard, size in enumerate(files.shard_sizes) for index in range(size)]
    rows = {}
    for name, frames in FRAME_SETS.items():
        rows[name] = {index: round(min(per_clip_ms(clips, frames, args, index) for _ in range(args.repeat)), 2)
                      for index in (True, False)}
    return {"codec": codec, "clips": len(clips), "ms_per_clip": rows}


@cli.tool("benchmarks/dali_decode_position.py")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/dali_decode_position.py", description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="folder for the raw clips and shards (reused)")
    p.add_argument("--codecs", default="vp9,mjpeg")
    p.add_argument("--device", default="cpu", help="cpu, or cuda[:N] for DALI 'mixed' (NVDEC)")
    p.add_argument("--threads", type=int, default=1, help="DALI threads (CPU time per clip does not depend on it)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--classes", type=int, default=8)       # the clips of loader_throughput.py's defaults, so
    p.add_argument("--clips-per-class", type=int, default=16)  # that both scripts share one --work folder
    p.add_argument("--num-frames", type=int, default=48)
    p.add_argument("--width", type=int, default=340)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3, help="passes per frame set; the lowest kept")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    require_dali()
    results = [measure(codec, args) for codec in args.codecs.split(",")]
    if args.json:
        print(json.dumps({"device": args.device, "results": results}))
        return 0
    unit = "ms per clip" if args.device.startswith("cuda") else "CPU ms per clip"
    print("| frames asked for | " + " | ".join(f"{r['codec']} {unit} (index / no index)" for r in results) + " |")
    print("|---|" + "---|" * len(results))
    for name in FRAME_SETS:
        cells = [f"{r['ms_per_clip'][name][True]:.1f} / {r['ms_per_clip'][name][False]:.1f}" for r in results]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
