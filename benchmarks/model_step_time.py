"""Forward+backward step time of TSM vs TSM+W3, eager and compiled, side by side in one run
(docs/BENCHMARKS.md, "Model: forward+backward step time").

CPU (what this machine can run):   python benchmarks/model_step_time.py --size 112
GPU goal (H100-class, <= +10 %):   python benchmarks/model_step_time.py --device cuda --bf16 --batch 32 --channels-last

Each step is one training-mode forward, a cross-entropy loss over the frame-averaged logits, and one
backward, on random frames. Each (arch, compile mode) pair gets a fresh model; its first step, which under
torch.compile includes compiling forward and backward, is reported apart as the compile time, then
``--warmup`` more steps are not timed; the ``--iters`` timed steps go round robin over the models (a shared
machine's load drifts; this way it falls on every row alike). ``--compile`` takes torch.compile modes (``none`` = eager), as
``train.compile`` does. Prints a table and W3's overhead over TSM per mode; ``--json`` prints one object.
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

from pipeline.errors import ConfigError
from pipeline.loader import resolve_device
from w3model import build_model
from w3model.compile import COMPILE_MODES, compile_model


def build(arch: str, mode: str, device: torch.device, args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(arch=arch, depth=args.depth, num_segments=args.frames, heads={"label": 174})
    model = model.to(device).train()
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    return compile_model(model, mode)


def train_step(model: torch.nn.Module, clip: torch.Tensor, labels: torch.Tensor, bf16: bool) -> float:
    """Seconds of one forward, loss and backward."""
    _sync(clip.device)
    start = time.perf_counter()
    with torch.autocast(clip.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(model(clip)["logits"]["label"].float(), labels)
    loss.backward()
    model.zero_grad(set_to_none=True)
    _sync(clip.device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, dict]:
    """Every (arch, mode) model is built, run once (compiling) and warmed up; then the timed steps go round
    robin over the models, so that a shared machine's changing load falls on all of them alike."""
    clip = torch.randn(args.batch, args.frames, 3, args.size, args.size, device=device)
    labels = torch.randint(0, 174, (args.batch,), device=device)
    models, first = {}, {}
    for mode in args.compile:
        for arch in args.archs:
            name = f"{arch}/{mode}"
            models[name] = build(arch, mode, device, args)
            first[name] = train_step(models[name], clip, labels, args.bf16)
            for _ in range(args.warmup):
                train_step(models[name], clip, labels, args.bf16)
            print(f"{name}: first step {first[name]:.1f} s", file=sys.stderr)
    times = {name: [] for name in models}
    for _ in range(args.iters):
        for name, model in models.items():
            times[name].append(train_step(model, clip, labels, args.bf16))
    rows = {}
    for name, ts in times.items():
        arch, mode = name.split("/")
        median = statistics.median(ts)
        rows[name] = {"arch": arch, "compile": mode, "median_s": median, "mean_s": statistics.fmean(ts),
                      "min_s": min(ts), "max_s": max(ts), "iters": len(ts), "first_step_s": first[name],
                      "compile_s": max(first[name] - median, 0.0) if mode != "none" else 0.0}
    base = args.archs[0]
    for row in rows.values():
        row["vs_baseline_arch"] = row["median_s"] / rows[f"{base}/{row['compile']}"]["median_s"] - 1
        row["vs_eager"] = (row["median_s"] / rows[f"{row['arch']}/none"]["median_s"] - 1
                           if f"{row['arch']}/none" in rows else None)
    return rows


def _modes(text: str) -> list[str]:
    modes = text.split(",")
    for mode in modes:
        if mode not in COMPILE_MODES:
            raise ConfigError(f"--compile: {mode!r} is not one of {', '.join(COMPILE_MODES)}")
    return modes


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f} %"


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
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--archs", default="tsm,tsm_w3", type=lambda s: s.split(","),
                        help="comma-separated; the first is the baseline")
    parser.add_argument("--compile", default="none,default", type=_modes,
                        help=f"comma-separated torch.compile modes of {', '.join(COMPILE_MODES)} (none: eager)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = measure(args, device)
    settings = {k: getattr(args, k) for k in ("batch", "frames", "size", "depth", "bf16", "channels_last",
                                               "warmup", "iters", "archs", "compile")}
    settings.update(device=str(device), threads=torch.get_num_threads(), torch=torch.__version__)
    if args.json:
        print(json.dumps({"settings": settings, "results": rows}))
        return 0
    print(" ".join(f"{k}={v}" for k, v in settings.items()))
    print(f"| arch | compile | median s/step | min | max | vs {args.archs[0]} | vs eager | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows.values():
        print(f"| {row['arch']} | {row['compile']} | {row['median_s']:.3f} | {row['min_s']:.3f} | "
              f"{row['max_s']:.3f} | {_pct(row['vs_baseline_arch'])} | {_pct(row['vs_eager'])} | "
              f"{row['compile_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
