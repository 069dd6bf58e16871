"""Training throughput of the real trainer (train/run.py): clips/s and the fraction of step time spent
waiting for data, TSM vs TSM+W3.

    python benchmarks/train_throughput.py --preset cpu --work /tmp/train-bench          # 2-core CPU figures
    python benchmarks/train_throughput.py --preset h100 --shards shards --work /tmp/tb  # one H100, bf16

Each arch is one `train/run.py` run of `--steps` optimiser steps with `train.log_every=--window`; the
figures are the mean of metrics.csv's clips_per_s / data_wait_frac over the windows after the first
(start-up, pipeline build and the first-iteration allocations are excluded). No evaluation runs.
The `cpu` preset synthesises and shards a small sthv2 set itself; `h100` reads `--shards` (real or
synthetic sthv2 shards, H.264 or VP9: DALI decodes them on the GPU) and runs TSM-R50+W3, 8x224^2, bf16.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from pipeline import cli

from pipeline.errors import DataError
from pipeline.synth import synthesize_and_shard
from train.run_log import read_csv

REPO = Path(__file__).resolve().parents[1]

PRESETS = {
    # small setting for a 2-core CPU machine
    "cpu": dict(depth=18, segments=4, crop=112, scale=128, batch=4, precision="fp32", steps=24, window=4),
    # the GPU goal: TSM-R50+W3, 8 segments, 224x224, bf16, one GPU (>= 250 clips/s, wait <= 5 %)
    "h100": dict(depth=50, segments=8, crop=224, scale=256, batch=32, precision="bf16", steps=120, window=20),
}


def make_cpu_shards(work: Path) -> Path:
    return synthesize_and_shard("sthv2", work, codec="vp9", short_side=128, splits="train",
                                workers=os.cpu_count() or 1, classes=4, clips_per_class=32, num_frames=32,
                                width=160, height=128).parent


def run_arch(arch: str, shards: Path, out: Path, s: dict, args: argparse.Namespace) -> dict:
    sets = {"data.shards": shards, "data.dataset": "sthv2", "out_dir": out, "model.arch": arch,
            "model.depth": s["depth"], "model.pretrained": "null", "data.num_segments": s["segments"],
            "data.crop_size": s["crop"], "data.scale_size": s["scale"], "data.num_threads": args.threads,
            "data.backend": args.backend, "train.batch_size": s["batch"], "train.precision": s["precision"],
            "train.max_steps": s["steps"], "train.epochs": 1000, "train.log_every": s["window"],
            "train.ckpt_every": 0, "train.progress": "false", "eval.every_epochs": 0, "eval.final": "false"}
    cmd = [sys.executable, "train/run.py", "--cfg", "launch/sthv2.yaml"]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if subprocess.run(cmd, cwd=REPO, env=env).returncode != 0:
        raise DataError(f"the {arch} run failed (its messages are above): {' '.join(map(str, cmd))}")
    rows = read_csv(out / "metrics.csv")[1:]            # the first window holds the start-up
    return {"arch": arch, "clips_per_s": sum(float(r["clips_per_s"]) for r in rows) / len(rows),
            "data_wait_frac": sum(float(r["data_wait_frac"]) for r in rows) / len(rows),
            "measured_steps": len(rows) * s["window"]}


@cli.tool("benchmarks/train_throughput.py")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/train_throughput.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (shards, run folders)")
    parser.add_argument("--shards", type=Path, help="shard root holding sthv2/ (h100 preset; cpu makes its own)")
    parser.add_argument("--archs", nargs="+", default=["tsm", "tsm_w3"])
    parser.add_argument("--backend", default="dali", choices=["dali", "reference"])
    parser.add_argument("--threads", type=int, default=2, help="loader threads per process")
    parser.add_argument("--steps", type=int, help="override the preset's step count")
    args = parser.parse_args(argv)
    s = dict(PRESETS[args.preset])
    if args.steps:
        s["steps"] = args.steps
    args.work.mkdir(parents=True, exist_ok=True)
    if args.shards is None and args.preset != "cpu":
        parser.error("--shards is required with --preset h100 (e.g. shards made by pipeline/shard.py)")
    shards = args.shards or make_cpu_shards(args.work)
    results = [run_arch(arch, shards, args.work / f"run-{arch}", s, args) for arch in args.archs]
    print(f"\npreset {args.preset}: R{s['depth']}, {s['segments']}x{s['crop']}^2, batch {s['batch']}, "
          f"{s['precision']}, backend {args.backend} ({platform.machine()}, {os.cpu_count()} cores)")
    print(f"{'arch':<8} {'clips/s':>8} {'data wait':>10}")
    for r in results:
        print(f"{r['arch']:<8} {r['clips_per_s']:8.2f} {r['data_wait_frac']:10.1%}")
    (args.work / "train_throughput.json").write_text(json.dumps({"preset": args.preset, "setting": s,
                                                                 "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
