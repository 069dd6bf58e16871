"""`python train/export.py CHECKPOINT OUT.pt`: a trainer checkpoint -> a plain PyTorch state dict.

CHECKPOINT is a complete checkpoint folder (`<out_dir>/checkpoints/best`, `.../step-*`) or a run folder
(its best checkpoint, else its newest). Its files are checked against the checksums in its COMPLETE
record first. ZeRO checkpoints (any stage) are consolidated with DeepSpeed's own zero_to_fp32 (its pickles
read as data only); the others hold accelerate's model.safetensors. Non-finite weights are refused. The
result is checked by loading it, strictly, into `w3model.build_model(**kwargs)`; the kwargs are written
beside it as OUT.json, with the view settings and the shards' class names that `train/predict.py` needs
(train/exported_model.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline import cli  # first: keeps train/ off sys.path when run by path

import torch

from pipeline.atomic import atomic_open, atomic_write
from pipeline.errors import NumericError, ResourceError

DEEPSPEED_TAG = "pytorch_model"      # accelerate's save_state names its DeepSpeed checkpoint so


def find_checkpoint(path: Path) -> Path:
    from train import checkpoint as ckpt_io
    if ckpt_io.is_complete(path):
        return path
    found = ckpt_io.run_checkpoint(path, prefer_best=True)
    if found is not None:
        return found
    raise ResourceError(f"{path}: not a complete checkpoint (no {ckpt_io.MARKER} file) nor a run folder with "
                        f"one under checkpoints/")


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DDP saves `module.`-prefixed names; the model's own names are wanted."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def raw_state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    from train.unpickle import data_only
    if (ckpt / DEEPSPEED_TAG).is_dir():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        with data_only():               # zero_to_fp32 calls torch.load(weights_only off)
            return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=DEEPSPEED_TAG)
    if (ckpt / "model.safetensors").is_file():
        from safetensors.torch import load_file
        return _strip_prefix(load_file(str(ckpt / "model.safetensors")))
    if (ckpt / "pytorch_model.bin").is_file():
        return _strip_prefix(torch.load(ckpt / "pytorch_model.bin", map_location="cpu", weights_only=True))
    raise ResourceError(f"{ckpt}: no model weights found (expected {DEEPSPEED_TAG}/ for DeepSpeed or "
                        f"model.safetensors)")


def finite_state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's weights; a NumericError naming the tensors that hold a NaN or an inf."""
    from train.nonfinite import nonfinite_tensors
    state = raw_state_dict(ckpt)
    bad = nonfinite_tensors(state)
    if bad:
        raise NumericError(f"{ckpt}: {len(bad)} of {len(state)} tensors hold NaN or inf values ("
                           f"{', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); not exporting them")
    return state


def load_trained(checkpoint: str | Path) -> tuple[torch.nn.Module, Path, dict]:
    """(model, checkpoint folder, its trainer state) of a checkpoint or run folder: the files checked against
    COMPLETE, the weights finite and loaded strictly into the model the run built (CPU, train mode)."""
    from train.checkpoint import check, read_trainer_state
    from w3model import build_model
    ckpt = find_checkpoint(Path(checkpoint))
    check(ckpt)                         # a DataError naming every damaged file
    state = read_trainer_state(ckpt)
    model = build_model(**dict(state["model"], pretrained=None))
    # strict: every parameter and buffer must be there; the model's own dtypes are kept (zero_to_fp32
    # returns buffers such as num_batches_tracked as float)
    model.load_state_dict(finite_state_dict(ckpt), strict=True)
    return model, ckpt, state


def export(checkpoint: str | Path, out: str | Path) -> tuple[Path, dict]:
    """Write the plain state dict to `out` and the build_model kwargs to `out` with suffix .json."""
    from train.exported_model import inference_record
    model, ckpt, state = load_trained(checkpoint)
    kwargs = state["model"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out) as fh:
        torch.save(model.state_dict(), fh)
    atomic_write(out.with_suffix(".json"), json.dumps({"build_model": kwargs, "checkpoint": str(ckpt),
                                                       **inference_record(state)}, indent=1))
    return out, kwargs


@cli.tool("train/export.py")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train/export.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint folder or run folder")
    parser.add_argument("out", help="output .pt (plain state dict)")
    args = parser.parse_args(argv)
    out, kwargs = export(args.checkpoint, args.out)
    print(f"wrote {out} (load with w3model.build_model(**json.load(open('{out.with_suffix('.json')}'))"
          f"['build_model']).load_state_dict(torch.load('{out}')))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
