"""Online loading: ``build_loader``, the one way to get a loader (docs/ARCHITECTURE.md §2).

The backends differ only in how a batch of planned samples becomes pixels: ``pipeline.dali_loader`` decodes
and transforms in a DALI pipeline (NVDEC 'mixed' on a GPU, libavcodec on the CPU), ``pipeline.reference_loader``
uses the ``webdataset`` library and PyAV in torch DataLoader workers. Both take the plan from
``pipeline.batches``, so the same settings give the same keys, labels, frame indices and crops from either.
Layers, each importing only downwards: shard_set -> batches -> backends -> this factory.
"""
from __future__ import annotations

import dataclasses
import os

import torch

from pipeline.batches import IMAGENET_MEAN, IMAGENET_STD, VideoLoader
from pipeline.errors import ConfigError, ResourceError
from pipeline.loader_settings import BACKENDS, LoaderSettings
from pipeline.plan import check_partition, default_flip
from pipeline.shard_set import ShardSet

__all__ = ["BACKENDS", "IMAGENET_MEAN", "IMAGENET_STD", "LoaderSettings", "VideoLoader", "build_loader",
           "resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """'cpu' or 'cuda[:N]' with a GPU present; a ResourceError otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r}: expected 'cpu' or 'cuda[:N]'") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r}: expected 'cpu' or 'cuda[:N]'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ResourceError(f"device {device!r}: no CUDA GPU visible to torch; use device='cpu'")
    return dev


def build_loader(shards_dir: str | os.PathLike, settings: LoaderSettings | None = None, *, rank: int = 0,
                 world_size: int = 1, device: str | torch.device = "cpu", **setting_values) -> VideoLoader:
    """A loader for one split of a shard directory.

    Pass a :class:`LoaderSettings` or its fields as keywords (``split=``, ``mode=``, ``batch_size=`` ...);
    ``rank``/``world_size`` pick this process's part of every epoch, ``device`` where batches land (on
    ``cuda:N`` the DALI backend decodes with NVDEC there).
    """
    if settings is None:
        settings = LoaderSettings(**setting_values)
    elif setting_values:
        raise TypeError(f"build_loader: give settings or keywords, not both ({', '.join(setting_values)})")
    check_partition(world_size=world_size, rank=rank)
    dev = resolve_device(device)
    shards = ShardSet(shards_dir, settings.split, split_label=settings.label("split"))
    if settings.flip is None:
        settings = dataclasses.replace(settings, flip=default_flip(shards.dataset))
    common = dict(rank=rank, world_size=world_size, device=dev)
    if settings.backend == "dali":
        from pipeline.dali_loader import DaliLoader      # DALI is optional: imported only when asked for
        return DaliLoader(shards, settings, **common)
    from pipeline.reference_loader import ReferenceLoader
    return ReferenceLoader(shards, settings, **common)
