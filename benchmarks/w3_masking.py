"""W3's element-wise work alone, forward+backward: w3model/masking.py's functions vs the plain tensor ops
(docs/BENCHMARKS.md, issue 14).

    python benchmarks/w3_masking.py --threads 1
    python benchmarks/w3_masking.py --channels-last --device cuda --bf16

Inputs are (16, C, H, W), a layer's W3 input at 8 frames and batch 2, for ResNet-50's four stages at 224 px
(and 112 px with --size 112); both masks come from tiny stand-in networks (a per-channel and a per-position
weight) so that the timing is the poolings and mask products. The two formulations alternate, best of
``--repeat``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from pipeline import cli

import torch

from pipeline.loader import resolve_device
from w3model.masking import fused_masking, plain_masking

STAGES = ((256, 4), (512, 8), (1024, 16), (2048, 32))  # channels, stride of the stage's maps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_one(fn, x0: torch.Tensor, grad: torch.Tensor, w_c: torch.Tensor, w_s: torch.Tensor, bf16: bool) -> float:
    x = x0.clone().requires_grad_()
    _sync(x0.device)
    start = time.perf_counter()
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = fn(x, lambda mean, max_: torch.sigmoid((mean + max_) * w_c),
                 lambda mean, max_: torch.sigmoid((mean + max_) * w_s))
    out.backward(grad)
    _sync(x0.device)
    return time.perf_counter() - start


def measure(args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = []
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    for channels, stride in STAGES:
        side = args.size // stride
        x0 = torch.randn(16, channels, side, side, device=device).to(memory_format=fmt)
        grad = torch.randn_like(x0)
        w_c = torch.randn(channels, device=device, requires_grad=True)
        w_s = torch.randn(side, side, device=device, requires_grad=True)
        best = {"plain": float("inf"), "fused": float("inf")}
        for _ in range(args.repeat):
            for name, fn in (("plain", plain_masking), ("fused", fused_masking)):
                best[name] = min(best[name], time_one(fn, x0, grad, w_c, w_s, args.bf16))
        rows.append({"shape": list(x0.shape), "plain_ms": round(best["plain"] * 1e3, 2),
                     "fused_ms": round(best["fused"] * 1e3, 2),
                     "change": round(best["fused"] / best["plain"] - 1, 3)})
    return rows


@cli.tool("benchmarks/w3_masking.py")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/w3_masking.py", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=224, help="input frame size the stages' maps follow from")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(args, resolve_device(args.device))
    if args.json:
        print(json.dumps({"settings": vars(args) | {"threads": torch.get_num_threads()}, "results": rows}))
        return 0
    print(f"threads={torch.get_num_threads()} size={args.size} channels_last={args.channels_last} bf16={args.bf16}")
    print("| input (N, C, H, W) | plain ops ms | masking.py ms | change |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {tuple(row['shape'])} | {row['plain_ms']} | {row['fused_ms']} | {100 * row['change']:+.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
