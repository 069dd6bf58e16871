"""Forward+backward step time of TSM vs TSM+W3 (docs/BENCHMARKS.md, "Model: forward+backward step time").

CPU (what this machine can run):   python benchmarks/model_step_time.py
GPU goal (H100-class, <= +10 %):   python benchmarks/model_step_time.py --device cuda --bf16 --batch 32 --channels-last

Each step is one training-mode forward, a cross-entropy loss over the frame-averaged logits, and one
backward, on random frames; the first ``--warmup`` steps are not timed. Prints one row per architecture
and the W3 overhead over TSM; ``--json`` prints the same as one object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from pipeline import cli

import torch
import torch.nn.functional as F

from pipeline.errors import ResourceError
from w3model import build_model


def step_times(arch: str, device: torch.device, batch: int, frames: int, size: int, bf16: bool,
               channels_last: bool, warmup: int, iters: int, depth: int) -> list[float]:
    torch.manual_seed(0)
    model = build_model(arch=arch, depth=depth, num_segments=frames, heads={"label": 174}).to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    clip = torch.randn(batch, frames, 3, size, size, device=device)
    labels = torch.randint(0, 174, (batch,), device=device)
    times = []
    for i in range(warmup + iters):
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(clip)["logits"]["label"].float(), labels)
        loss.backward()
        model.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@cli.tool("benchmarks/model_step_time.py")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/model_step_time.py", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--bf16", action="store_true", help="torch.autocast to bfloat16")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--archs", default="tsm,tsm_w3", help="comma-separated; the first is the baseline")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ResourceError(f"--device {args.device}: no CUDA device visible to torch {torch.__version__}")
    rows = {}
    for arch in args.archs.split(","):
        times = step_times(arch, device, args.batch, args.frames, args.size, args.bf16, args.channels_last,
                           args.warmup, args.iters, args.depth)
        rows[arch] = {"median_s": statistics.median(times), "mean_s": statistics.fmean(times),
                      "min_s": min(times), "max_s": max(times), "iters": len(times)}
    baseline = rows[next(iter(rows))]["median_s"]
    for row in rows.values():
        row["overhead"] = row["median_s"] / baseline - 1
    settings = {k: getattr(args, k) for k in ("device", "batch", "frames", "size", "depth", "bf16", "channels_last",
                                               "warmup", "iters")}
    settings["threads"] = torch.get_num_threads()
    if args.json:
        print(json.dumps({"settings": settings, "results": rows}))
        return 0
    print(" ".join(f"{k}={v}" for k, v in settings.items()))
    print("| arch | median s/step | min | max | vs first |")
    print("|---|---|---|---|---|")
    for arch, row in rows.items():
        print(f"| {arch} | {row['median_s']:.3f} | {row['min_s']:.3f} | {row['max_s']:.3f} | "
              f"{100 * row['overhead']:+.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
