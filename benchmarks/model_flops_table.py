"""Parameters and GFLOPs of the five architectures (docs/BENCHMARKS.md, "Model: parameters and GFLOPs").

    python benchmarks/model_flops_table.py [--depth 50] [--classes 174] [--size 224]

Counts with ``w3model.flops.count`` (multiply-accumulates of one clip, PyTorch's FlopCounterMode) at 8 and
16 frames and prints a Markdown table with the published figures beside ours.
"""
from __future__ import annotations

import argparse
import sys

from pipeline import cli

from w3model.config import ARCHS, DEPTHS
from w3model.flops import count

# Paper Table 6 (TSM-R50, 16 frames, Something-Something V1); TSN/TSM 8f and TSM+W3 8f from its Table 1.
PAPER_GFLOPS = {("tsm", 16): "65.0", ("tsm_cbam", 16): "66.5", ("tsm_nl", 16): "115.0", ("tsm_w3", 16): "67.1",
                ("tsn", 8): "33", ("tsm", 8): "33", ("tsm_w3", 8): "33.5"}
# MMAction2 model zoo, TSM-R50 1x1x8, Something-Something (174 classes).
MMACTION2 = {("tsm", 8): "32.88 / 23.87 M"}


@cli.tool("benchmarks/model_flops_table.py")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/model_flops_table.py", description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=50, choices=DEPTHS)
    parser.add_argument("--classes", type=int, default=174)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    # The published figures are for ResNet-50 at 224x224 with 174 classes; other settings show none.
    published = (args.depth, args.size, args.classes) == (50, 224, 174)
    print(f"ResNet-{args.depth}, {args.size}x{args.size}, {args.classes} classes, batch 1 clip; "
          f"GFLOPs = multiply-accumulates / 1e9")
    print()
    print("| arch | frames | params (M) | GFLOPs (ours) | vs TSM | paper GFLOPs | MMAction2 GFLOPs / params |")
    print("|---|---|---|---|---|---|---|")
    for frames in (8, 16):
        rows = {arch: count(arch, args.depth, frames, args.classes, args.size) for arch in ARCHS}
        base = rows["tsm"]["gflops"]
        for arch, row in rows.items():
            paper = PAPER_GFLOPS.get((arch, frames), "-") if published else "-"
            mmaction2 = MMACTION2.get((arch, frames), "-") if published else "-"
            print(f"| {arch} | {frames} | {row['params'] / 1e6:.2f} | {row['gflops']:.2f} | "
                  f"{100 * (row['gflops'] / base - 1):+.2f} % | {paper} | {mmaction2} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
