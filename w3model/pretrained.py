"""Load a torchvision ImageNet ResNet ``state_dict`` file (e.g. ``resnet50-0676ba61.pth``) onto the trunk.

Nothing is downloaded: the file is given by path. Every torchvision trunk parameter and buffer must be in
the file with the right shape (strict on the torchvision names; only BatchNorm's ``num_batches_tracked``
counters, which torchvision's 2017 files predate, may be absent); the file's ``fc`` is dropped because the
video heads differ; the video modules (W3, CBAM, non-local) keep their own initialisation. Anything else
(a missing key, an unexpected key, a shape mismatch) is a ``DataError`` that lists the keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.errors import DataError, ResourceError
from w3model.resnet import ResNet

IMAGENET_HEAD = ("fc.weight", "fc.bias")
VIDEO_SLOTS = (".attention.", ".non_local.")  # see w3model.resnet: new modules, never in an ImageNet file


@dataclass(frozen=True)
class LoadReport:
    loaded: list[str]  # trunk keys taken from the file
    dropped: list[str]  # file keys deliberately not used (the ImageNet classifier)
    kept_new: list[str]  # trunk keys of the video modules, left at their initialisation
    defaulted: list[str]  # BatchNorm counters absent from older files (torchvision's 2017 weights), left at 0


def torchvision_keys(backbone: ResNet) -> dict[str, torch.Size]:
    """The trunk's state_dict keys that a torchvision ResNet file provides, with shapes."""
    return {k: v.shape for k, v in backbone.state_dict().items() if not any(s in k for s in VIDEO_SLOTS)}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict file; accept the common wrappers ``{"state_dict": ...}`` / ``{"model": ...}``."""
    path = Path(path)
    if not path.is_file():
        raise ResourceError(f"pretrained weights {path}: no such file (give a torchvision ResNet state_dict "
                            f"saved with torch.save, e.g. resnet50-0676ba61.pth)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a corrupt or non-torch file
        raise DataError(f"pretrained weights {path}: not a readable torch state_dict file ({error})") from error
    for wrapper in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise DataError(f"pretrained weights {path}: expected a mapping of parameter names to tensors")
    # DataParallel checkpoints prefix every key with "module."
    if data and all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return data


def load_torchvision_resnet(backbone: ResNet, path: str | Path) -> LoadReport:
    """Copy a torchvision ResNet ``state_dict`` file into ``backbone``; see the module docstring."""
    state = read_state_dict(path)
    expected = torchvision_keys(backbone)
    dropped = [k for k in IMAGENET_HEAD if k in state]
    given = {k: v for k, v in state.items() if k not in IMAGENET_HEAD}
    defaulted = sorted(k for k in set(expected) - set(given) if k.endswith(".num_batches_tracked"))
    missing = sorted(set(expected) - set(given) - set(defaulted))
    unexpected = sorted(set(given) - set(expected))
    mismatched = sorted(f"{k}: file {tuple(given[k].shape)} vs model {tuple(expected[k])}"
                        for k in set(given) & set(expected) if given[k].shape != expected[k])
    if missing or unexpected or mismatched:
        problems = []
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                problems.append(f"{title}: {shown}")
        raise DataError(f"pretrained weights {path} do not fit a torchvision ResNet-{backbone.depth}: "
                        + "; ".join(problems)
                        + ". Give the ImageNet file of the same depth (torchvision naming).")
    # strict=True over the whole trunk: the video modules' entries are their own current values.
    full = backbone.state_dict()
    new_keys = sorted(set(full) - set(given) - set(defaulted))
    full.update(given)
    backbone.load_state_dict(full, strict=True)
    return LoadReport(loaded=sorted(given), dropped=dropped, kept_new=new_keys, defaulted=defaulted)
