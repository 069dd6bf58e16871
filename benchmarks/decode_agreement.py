"""How close the DALI loader's pixels are to the reference loader's (PyAV on the CPU): PSNR per clip over the
validation views of a shard set, both loaders on the same plan.

    python benchmarks/decode_agreement.py SHARDS_DIR --device cuda [--batches 8] [--json]   # NVDEC vs PyAV
    python benchmarks/decode_agreement.py SHARDS_DIR                                         # DALI CPU vs PyAV

The frames compared are the loaders' outputs with the ImageNet normalisation undone (uint8, after crop and
resize), i.e. what the model sees; the keys and views are checked to be the same first.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

from pipeline import cli

import numpy as np

from pipeline.errors import DataError
from pipeline.loader import build_loader, resolve_device
from pipeline.peek import to_uint8


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def compare(shards_dir: str, device: str, batches: int, batch_size: int) -> dict:
    settings = dict(split="val", mode="val", batch_size=batch_size, num_segments=8, crop_size=224, scale_size=256,
                    num_threads=4)
    dali = build_loader(shards_dir, backend="dali", device=device, **settings)
    reference = build_loader(shards_dir, backend="reference", device="cpu", **settings)
    values = []
    for n, (a, b) in enumerate(zip(dali, reference)):
        if n == batches:
            break
        if a["keys"] != b["keys"]:
            raise DataError(f"the loaders disagree on the plan: {a['keys']} vs {b['keys']}")
        ours, theirs = to_uint8(a["frames"]), to_uint8(b["frames"])
        values += [psnr(x, y) for x, y in zip(ours, theirs)]
    finite = [v for v in values if math.isfinite(v)]
    return {"clips": len(values), "psnr_db_mean": round(float(np.mean(finite)), 2) if finite else math.inf,
            "psnr_db_min": round(min(finite), 2) if finite else math.inf, "identical_clips": len(values) - len(finite),
            "codec": dali.shards.codec, "device": device}


@cli.tool("benchmarks/decode_agreement.py")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/decode_agreement.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("shards_dir", help="<out>/<dataset> with a val split")
    parser.add_argument("--device", default="cpu", help="cuda[:N]: DALI decodes with NVDEC ('mixed')")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = compare(args.shards_dir, str(resolve_device(args.device)), args.batches, args.batch_size)
    print(json.dumps(result) if args.json else
          f"{result['codec']} on {result['device']}: PSNR {result['psnr_db_mean']} dB mean, {result['psnr_db_min']} "
          f"dB worst over {result['clips']} clips ({result['identical_clips']} identical)")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
