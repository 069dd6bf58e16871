"""A trained model away from its run: what `train/export.py` keeps beside the weights so that the model can
be used on new videos (`train/predict.py`), and loading it back.

`<out>.json` holds `build_model` (the w3model arguments), `dataset`, `view` (the loader's `crop_size` and
`scale_size`; `num_segments` is a model argument) and `classes` (the shards' manifest's class names per
head; EPIC also `action`, its (verb, noun) pairs), so that predictions sample, crop and name classes as
training did. The weights are a plain state dict, read with `weights_only=True` (no code runs on loading).
"""
from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.atomic import atomic_open, atomic_write
from pipeline.errors import ConfigError, DataError, ResourceError
from pipeline.manifest import MANIFEST, read_manifest


@dataclass
class ExportedModel:
    model: torch.nn.Module
    num_segments: int
    crop_size: int
    scale_size: int
    heads: dict[str, int]
    classes: dict[str, list] | None    # None: exported without its manifest (class ids only)
    source: str                        # the .pt file, or the checkpoint it was exported from


def _manifest_classes(cfg: dict, heads: dict[str, int]) -> tuple[dict[str, list] | None, str]:
    """The class names of the shards the run trained on, and why not if they cannot be had."""
    from train.config import shards_dir
    folder = shards_dir(cfg)
    try:
        manifest = read_manifest(folder)
    except (ResourceError, DataError) as e:
        return None, str(e)
    if manifest.get("heads") != heads:
        return None, f"{folder / MANIFEST} has heads {manifest.get('heads')}, the model {heads}"
    return manifest.get("classes"), ""


def inference_record(trainer_state: dict) -> dict:
    """What export adds to `<out>.json` besides `build_model` (see the module docstring)."""
    cfg, heads = trainer_state["config"], trainer_state["heads"]
    classes, why = _manifest_classes(cfg, heads)
    if classes is None:
        print(f"warning: class names not kept with the model ({why}); train/predict.py will print class "
              f"ids", file=sys.stderr)
    data = cfg["data"]
    return {"dataset": data["dataset"], "view": {"crop_size": data["crop_size"], "scale_size": data["scale_size"]},
            "classes": classes}


def write_exported(out: Path, model: torch.nn.Module, build_kwargs: dict, record: dict) -> Path:
    """The same two files as export, for a model that never was a run (tests, benchmarks)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out) as fh:
        torch.save(model.state_dict(), fh)
    atomic_write(out.with_suffix(".json"), json.dumps({"build_model": build_kwargs, **record}, indent=1))
    return out


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ResourceError(f"{path} not found: train/export.py writes it beside the .pt (re-export, or pass "
                            f"the run or checkpoint folder)")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    for key in ("build_model", "view"):
        if not isinstance(record.get(key), dict):
            raise DataError(f"{path}: no {key!r} section (exported before train/predict.py existed?); re-export "
                            f"with `python train/export.py RUN_OR_CHECKPOINT OUT.pt`")
    return record


def _load_files(weights: Path, device: torch.device) -> ExportedModel:
    from w3model import build_model
    record = _read_json(weights.with_suffix(".json"))
    try:
        model = build_model(**dict(record["build_model"], pretrained=None))
    except ConfigError as e:
        raise DataError(f"{weights.with_suffix('.json')}: build_model: {e}") from None
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, EOFError, OSError) as e:   # torch reports a bad file or state as these
        raise DataError(f"{weights}: not the weights of the model its .json describes ({str(e).splitlines()[0]})"
                        ) from None
    view = record["view"]
    try:
        crop, scale = int(view["crop_size"]), int(view["scale_size"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{weights.with_suffix('.json')}: view needs integer crop_size and scale_size, got "
                        f"{view}") from None
    return ExportedModel(model.to(device).eval(), model.config.num_segments, crop, scale,
                         dict(model.config.heads), record.get("classes"), str(weights))


def load_exported(path: str | Path, device: torch.device) -> ExportedModel:
    """An exported `.pt` (with its `.json`), or a run / checkpoint folder, exported first by export.py (the
    same checks as exporting it by hand) into a temporary folder."""
    path = Path(path)
    if path.is_dir():
        from train.export import export
        with tempfile.TemporaryDirectory(prefix="w3-predict-") as tmp:
            out, _ = export(path, Path(tmp) / "model.pt")
            loaded = _load_files(out, device)
        loaded.source = str(path)
        return loaded
    if not path.is_file():
        raise ResourceError(f"model {path}: no such file or folder (an exported .pt, or a run or checkpoint "
                            f"folder)")
    return _load_files(path, device)
