"""How far train/predict.py's scores of a source file are from the loader's scores of the same clip in shards.

    python benchmarks/predict_agreement.py MODEL.pt SHARDS/sthv2 [--split val] [--mode val|test]
        [--backends dali,reference] [--raw RAW_DIR]

Per clip of the split: the model's scores through `build_loader` (the evaluation's path) and through
`predict` on the clip's source file (found from its sample JSON and the manifest's `--root`, or `--raw`).
Prints the largest, mean and 95th-percentile difference of any class score and how often the top-1 class
agrees. With `--codec copy` shards both sides decode the same bytes; with transcoded shards the difference
is what re-encoding costs. Something-Something only: elsewhere a clip is a span of a longer source.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline import cli

import numpy as np
import torch
from accelerate import Accelerator

from pipeline.errors import ConfigError
from pipeline.loader import build_loader
from pipeline.loader_settings import LoaderSettings
from pipeline.manifest import read_manifest
from pipeline.shard_set import ShardSet
from train.evaluate import aggregate_views, collect_scores
from train.exported_model import ExportedModel, load_exported
from train.predict import predict

WHOLE_FILE_DATASETS = ("sthv1", "sthv2")


def source_files(shards: Path, split: str, raw: Path) -> dict[str, Path]:
    """Shard key -> the file or frame folder the clip was made from."""
    index = ShardSet(shards, split)
    try:
        return {meta["key"]: raw / meta["source"]["file"]
                for shard, f in enumerate(index.files) for meta, _ in (index.read(shard, i) for i in range(f.samples))}
    finally:
        index.close()


def score_vector(record: dict, head: str, classes: int) -> np.ndarray:
    """A predict record's scores over all classes (it holds the top k; pass k >= classes)."""
    out = np.zeros(classes)
    for entry in record["top"][head]:
        out[entry["class"]] = entry["score"]
    return out


def loader_vs_files(exported: ExportedModel, shards: Path, split: str, mode: str, backend: str,
                    predict_backend: str, raw: Path | None = None) -> list[tuple[np.ndarray, dict]]:
    """Per clip: (the loader's scores of its one head, the predict record of its source file)."""
    manifest = read_manifest(shards)
    if manifest["dataset"] not in WHOLE_FILE_DATASETS:
        raise ConfigError(f"{shards}: {manifest['dataset']} clips are spans of longer sources; compare "
                          f"{' or '.join(WHOLE_FILE_DATASETS)} shards")
    view = dict(num_segments=exported.num_segments, crop_size=exported.crop_size, scale_size=exported.scale_size)
    loader = build_loader(shards, split=split, mode=mode, backend=backend, batch_size=8, **view)
    clips = aggregate_views(collect_scores(exported.model, loader, Accelerator(cpu=True)))
    loader.close()
    sources = source_files(shards, split, Path(raw or manifest["options"]["root"]))
    settings = LoaderSettings(split="files", mode=mode, batch_size=8, backend=predict_backend, **view)
    records = predict(exported, [sources[k] for k in clips], settings, torch.device("cpu"), topk=1 << 30)
    by_input = {r["input"]: r for r in records}
    missing = [r for r in records if "error" in r]
    if missing:
        raise ConfigError(f"source files of the clips cannot be read, e.g. {missing[0]['input']}: "
                          f"{missing[0]['error']} (pass --raw)")
    return [(clip["scores"]["label"], by_input[str(sources[key])]) for key, clip in clips.items()]


def summary(pairs: list[tuple[np.ndarray, dict]]) -> dict:
    diffs = np.array([np.abs(score_vector(r, "label", len(s)) - s).max() for s, r in pairs])
    agree = np.mean([np.argmax(score_vector(r, "label", len(s))) == np.argmax(s) for s, r in pairs])
    return {"clips": len(pairs), "max": float(diffs.max()), "mean": float(diffs.mean()),
            "p95": float(np.quantile(diffs, 0.95)), "top1_agree": float(agree)}


@cli.tool("benchmarks/predict_agreement.py")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/predict_agreement.py", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="exported .pt, or a run or checkpoint folder")
    p.add_argument("shards", type=Path, help="<out>/<dataset> of the shard tool")
    p.add_argument("--split", default="val")
    p.add_argument("--mode", choices=("val", "test"), default="val")
    p.add_argument("--backends", default="dali,reference",
                   help="loader backends; predict uses the same one (and DALI vs PyAV: dali:reference)")
    p.add_argument("--raw", type=Path, default=None, help="the raw dataset folder (default: the manifest's --root)")
    args = p.parse_args(argv)
    exported = load_exported(args.model, torch.device("cpu"))
    for pair in args.backends.split(","):
        backend, _, predict_backend = pair.partition(":")
        pairs = loader_vs_files(exported, args.shards, args.split, args.mode, backend, predict_backend or backend,
                                args.raw)
        print(json.dumps({"shards": str(args.shards), "codec": read_manifest(args.shards)["codec"],
                          "mode": args.mode, "loader": backend, "predict": predict_backend or backend,
                          **summary(pairs)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
