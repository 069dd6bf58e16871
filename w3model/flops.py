"""GFLOPs and parameters of one model, counted as the papers count them.

``python -m w3model.flops --arch tsm_w3 [--depth 50] [--frames 8] [--classes 174] [--size 224] [--json]``

GFLOPs here are multiply-accumulates of one clip (batch 1, ``frames`` x size x size), the convention of
the TSM, W3 and MMAction2 tables. They are measured by running the model under PyTorch's
``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per multiply-accumulate of every
convolution, matrix product and attention op; we halve that. Element-wise work (BatchNorm, ReLU,
pooling, the sigmoid masks) is not counted, as in fvcore/MMAction2.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline import cli  # first: keeps w3model/ off sys.path when run by path

import torch
from torch.utils.flop_counter import FlopCounterMode

from w3model.config import ARCHS, DEPTHS
from w3model.model import build_model


def count(arch: str, depth: int = 50, frames: int = 8, classes: int = 174, size: int = 224,
          **options: Any) -> dict[str, Any]:
    """``{"gflops": multiply-accumulates / 1e9, "params": count, ...}`` of one clip."""
    # On the meta device nothing is computed or allocated: only shapes flow, which is all the counter needs.
    with torch.device("meta"):
        model = build_model(arch=arch, depth=depth, num_segments=frames, heads={"label": classes}, **options).eval()
        clip = torch.zeros(1, frames, 3, size, size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(clip)
    return {
        "arch": arch, "depth": depth, "frames": frames, "classes": classes, "size": size,
        "gflops": counter.get_total_flops() / 2 / 1e9,
        "params": sum(p.numel() for p in model.parameters()),
    }


@cli.tool("w3model.flops")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m w3model.flops", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, choices=ARCHS)
    parser.add_argument("--depth", type=int, default=50, choices=DEPTHS)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--classes", type=int, default=174)
    parser.add_argument("--size", type=int, default=224, help="crop size (pixels)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = count(args.arch, args.depth, args.frames, args.classes, args.size)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.arch} ResNet-{args.depth} {args.frames}x{args.size}x{args.size}, {args.classes} classes: "
              f"{result['gflops']:.2f} GFLOPs (multiply-accumulates), {result['params'] / 1e6:.2f} M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
