"""ImageNet weights for the trunk: torchvision's ResNet ``state_dict`` files, by name or by path.

``model.pretrained: imagenet`` names torchvision's ImageNet file of the model's depth. The paper trains
every dataset from ImageNet weights, following TSM, which called torchvision's ``resnet50(pretrained=True)``
in 2019: the weights torchvision now publishes as ``IMAGENET1K_V1`` (re-saved in 2020 in the zip format
under the names below, pytorch/vision#2068). ``IMAGENET1K_V2`` (a longer recipe, 80.9 % instead of 76.1 %
top-1 for ResNet-50) is a different starting point than the one the paper's numbers come from, and exists
for ResNet-50/101 only; V1 is used. The file is looked up in torch.hub's cache folder
(``torch.hub.get_dir()/checkpoints``, i.e. ``$TORCH_HOME/hub/checkpoints``, shared with torchvision), and
downloaded there with torch.hub's check of the published hash (the hex part of the name is the start of
its sha256) when missing. Offline, the error names the file, the folder to put it in and the URL. A cached
file whose sha256 does not start with the published prefix (not the file torchvision published: converted
or damaged) is used, with a warning that says so; its keys and shapes are checked like any file's.

Any other value is a path to such a file. Every torchvision trunk parameter and buffer must be in the file
with the right shape (strict on the torchvision names; only BatchNorm's ``num_batches_tracked`` counters,
which torchvision's 2017 files predate, may be absent); the file's ``fc`` is dropped because the video
heads differ; the video modules (W3, CBAM, non-local) keep their own initialisation. Anything else (a
missing key, an unexpected key, a shape mismatch) is a ``DataError`` that lists the keys. Files are read
with ``weights_only=True``: nothing in them runs.
"""
from __future__ import annotations

import hashlib
import logging
import sys
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.errors import DataError, ResourceError
from w3model.resnet import ResNet

log = logging.getLogger(__name__)

IMAGENET = "imagenet"
IMAGENET_URLS = {    # torchvision's ResNet{18,34,50,101}_Weights.IMAGENET1K_V1
    18: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    34: "https://download.pytorch.org/models/resnet34-b627a593.pth",
    50: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    101: "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}
IMAGENET_HEAD = ("fc.weight", "fc.bias")
VIDEO_SLOTS = (".attention.", ".non_local.")  # see w3model.resnet: new modules, never in an ImageNet file


@dataclass(frozen=True)
class LoadReport:
    loaded: list[str]  # trunk keys taken from the file
    dropped: list[str]  # file keys deliberately not used (the ImageNet classifier)
    kept_new: list[str]  # trunk keys of the video modules, left at their initialisation
    defaulted: list[str]  # BatchNorm counters absent from older files (torchvision's 2017 weights), left at 0
    path: str = ""  # the file read


def hub_path(url: str) -> Path:
    """Where torch.hub keeps the file of ``url`` (``$TORCH_HOME/hub/checkpoints/<name>``), read now."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def published_hash_prefix(url: str) -> str:
    """The sha256 prefix in a torchvision file name (``resnet50-0676ba61.pth`` -> ``0676ba61``)."""
    return torch.hub.HASH_REGEX.search(url.rsplit("/", 1)[-1]).group(1)


def imagenet_file(depth: int) -> Path:
    """torchvision's ImageNet file of ResNet-``depth``: from torch.hub's cache, downloaded if missing."""
    url = IMAGENET_URLS[depth]
    path = hub_path(url)
    if path.is_file():
        _warn_if_not_published(path, url)
        return path
    print(f"model.pretrained imagenet: downloading {url} to {path}", file=sys.stderr, flush=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), hash_prefix=published_hash_prefix(url), progress=False)
    except RuntimeError as error:        # torch.hub's hash check; the partial file is removed
        raise DataError(f"model.pretrained imagenet: the download of {url} is not the published file "
                        f"({error}); nothing was kept at {path}") from error
    except (urllib.error.URLError, OSError) as error:
        raise ResourceError(
            f"model.pretrained imagenet: torchvision's ImageNet ResNet-{depth} weights are not in torch.hub's "
            f"cache and could not be downloaded ({error}). On a machine with internet, download {url} and "
            f"put it at {path} (the folder is torch.hub.get_dir()/checkpoints; set TORCH_HOME to move "
            f"it), or give model.pretrained the path of the file") from error
    return path


def _warn_if_not_published(path: Path, url: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    prefix = published_hash_prefix(url)
    if not digest.hexdigest().startswith(prefix):
        log.warning("%s is not the file torchvision published at %s (sha256 %s does not start with %s); "
                    "using it as given: delete it to download the published one", path, url,
                    digest.hexdigest(), prefix)


def load_pretrained(backbone: ResNet, source: str) -> LoadReport:
    """``source``: ``imagenet`` (torchvision's file of the trunk's depth, see above) or a file path."""
    path = imagenet_file(backbone.depth) if source == IMAGENET else Path(source)
    return load_torchvision_resnet(backbone, path)


def scratch_warning(pretrained: str | None, chosen_explicitly: bool) -> str | None:
    """The warning for a run that trains from scratch without having said so (the config's
    ``model.pretrained`` is null only by default): the paper starts every dataset from ImageNet."""
    if pretrained is not None or chosen_explicitly:
        return None
    return ("model.pretrained is null (the default): training from scratch, while the paper starts every "
            "dataset from ImageNet weights. Set model.pretrained: imagenet (or a file), or write "
            "model.pretrained: null in the experiment's YAML to train from scratch on purpose")


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
    return LoadReport(loaded=sorted(given), dropped=dropped, kept_new=new_keys, defaulted=defaulted,
                      path=str(path))
