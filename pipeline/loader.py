"""Online loading: ``build_loader`` and what both backends share (shard access, batch plan, resume state).

The backends differ only in how a batch of planned samples becomes pixels: ``pipeline.dali_loader`` decodes
and transforms in a DALI pipeline (NVDEC 'mixed' on a GPU, libavcodec on the CPU), ``pipeline.reference_loader``
uses the ``webdataset`` library and PyAV in torch DataLoader workers. Both take the plan from here, so the same
settings give the same keys, labels, frame indices and crops from either.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from pipeline.errors import ConfigError, DataError, ResourceError
from pipeline.manifest import MANIFEST, read_manifest
from pipeline.shard_writer import read_index
from pipeline.plan import (DEFAULT_SHUFFLE_WINDOW, PlanItem, View, check_mode, check_partition, check_window,
                           default_flip, flip_label_map, items_per_rank, make_view, rank_items)

log = logging.getLogger("pipeline.loader")

BACKENDS = ("dali", "reference")
BAD_SAMPLE_POLICIES = ("raise", "skip")
CPU_DECODABLE = ("vp9", "vp8", "mjpeg")  # DALI's CPU video decoder; the rest needs NVDEC
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------ shard access


@dataclass(frozen=True)
class ShardFile:
    path: Path
    index_path: Path
    samples: int
    bytes: int


class ShardSet:
    """One split of a shard directory: manifest, checked files, and random access to samples by position."""

    def __init__(self, shards_dir: str | os.PathLike, split: str):
        self.root = Path(shards_dir)
        self.manifest = read_manifest(self.root)
        try:
            entries = self.manifest["splits"][split]["shards"]
        except KeyError:
            known = ", ".join(self.manifest.get("splits", {})) or "none"
            raise ConfigError(f"data.split: {split!r} is not in {self.root / MANIFEST} (splits: {known})") from None
        self.split = split
        self.dataset = self.manifest.get("dataset", "")
        self.codec = self.manifest.get("codec", "")
        self.video_ext = self.manifest.get("video_ext", "")
        self.heads: dict[str, int] = dict(self.manifest.get("heads", {}))
        self.classes: dict[str, list] = dict(self.manifest.get("classes", {}))
        self.files = [ShardFile(self.root / e["file"], self.root / e["index"], int(e["samples"]), int(e["bytes"]))
                      for e in entries]
        self._check_files()
        self._members: dict[int, list[dict[str, tuple[int, int]]]] = {}
        self._keys: dict[int, list[str]] = {}
        self._handles: dict[int, Any] = {}

    def _check_files(self) -> None:
        """Missing or truncated shards fail here, all listed at once, rather than mid-epoch."""
        missing, damaged = [], []
        for f in self.files:
            if not f.path.is_file():
                missing.append(f"{f.path} (missing)")
            elif f.path.stat().st_size != f.bytes:
                damaged.append(f"{f.path} (truncated or changed: {f.path.stat().st_size} bytes, manifest says "
                               f"{f.bytes})")
            if not f.index_path.is_file():
                missing.append(f"{f.index_path} (missing index; recreate it with `wds2idx {f.path} {f.index_path}`)")
        if missing or damaged:
            kind = ResourceError if missing else DataError
            raise kind(f"{self.root / MANIFEST} split {self.split!r}: {len(missing) + len(damaged)} shard "
                       f"file(s) unusable; reshard or restore them:\n  " + "\n  ".join(missing + damaged))

    @property
    def shard_sizes(self) -> list[int]:
        return [f.samples for f in self.files]

    def members(self, shard: int) -> list[dict[str, tuple[int, int]]]:
        """Per sample of a shard: extension -> (offset, size), from the DALI index beside the tar."""
        if shard not in self._members:
            f = self.files[shard]
            rows = read_index(f.index_path)
            table = [members for _, members in rows]
            self._keys[shard] = [key for key, _ in rows]
            if len(table) != f.samples:
                raise DataError(f"{f.index_path}: indexes {len(table)} samples, manifest says {f.samples} for "
                                f"{f.path}; recreate it with `wds2idx {f.path} {f.index_path}`")
            self._members[shard] = table
        return self._members[shard]

    def key(self, shard: int, index: int) -> str:
        """The sample's key, from the member names in the index (readable even when its JSON is not)."""
        self.members(shard)
        return self._keys[shard][index]

    def read(self, shard: int, index: int) -> tuple[dict, bytes]:
        """(metadata JSON, encoded video) of one sample, read by offset without scanning the tar."""
        f = self.files[shard]
        entry = self.members(shard)[index]
        if shard not in self._handles:
            self._handles[shard] = open(f.path, "rb")
        handle = self._handles[shard]

        def member(ext: str) -> bytes:
            offset, size = entry[ext]
            handle.seek(offset)
            return handle.read(size)

        video_ext = self.video_ext if self.video_ext in entry else next((e for e in entry if e != "json"), None)
        if "json" not in entry or video_ext is None:
            raise DataError(f"{f.path}: sample {self.key(shard, index)} lacks a json or video member "
                            f"(has {sorted(entry)})")
        try:
            meta = json.loads(member("json"))
        except json.JSONDecodeError as e:
            raise DataError(f"{f.path}: sample {self.key(shard, index)}: metadata is not valid JSON ({e})") from e
        return meta, member(video_ext)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __getstate__(self):  # open files do not travel to DataLoader workers
        return {**self.__dict__, "_handles": {}}


# ------------------------------------------------------------------------------------------ plan -> specs


@dataclass(frozen=True)
class LoaderSettings:
    """Everything that decides which batches a loader yields; recorded in ``state_dict()``."""

    split: str
    mode: str
    batch_size: int
    num_segments: int
    crop_size: int
    scale_size: int
    seed: int
    world_size: int
    rank: int
    flip: bool
    shuffle_window: int = DEFAULT_SHUFFLE_WINDOW


@dataclass
class SampleSpec:
    """A planned sample after its metadata was read: what to decode, how to cut it, what it is labelled."""

    shard: int
    index: int
    key: str
    labels: dict[str, int]
    view: View
    view_id: int
    valid: bool


@dataclass
class SkipLog:
    """Samples replaced under ``bad_sample='skip'``: (shard file, key or position, reason)."""

    entries: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, shard: str, key: str, reason: str) -> None:
        self.entries.append((shard, key, reason))
        log.warning("skipping bad sample %s in %s (%s); %d skipped so far", key, shard, reason, len(self.entries))


def _label_field(head: str) -> str:
    return "label" if head == "label" else f"{head}_class"


class SamplePlanner:
    """Turns plan items into sample specs: reads metadata, computes the view, maps labels under flip."""

    def __init__(self, shards: ShardSet, settings: LoaderSettings):
        self.shards = shards
        self.settings = settings
        self.flip_maps = {h: flip_label_map(self.shards.classes[h]) for h in shards.heads if h in shards.classes}

    def spec(self, item: PlanItem, meta: dict) -> SampleSpec:
        s = self.settings
        key = meta.get("key") or self.shards.key(item.shard, item.index)
        try:
            view = make_view(mode=s.mode, seed=s.seed, key=key, view_id=item.view_id,
                             num_frames=int(meta["num_frames"]), width=int(meta["width"]),
                             height=int(meta["height"]), num_segments=s.num_segments, crop_size=s.crop_size,
                             scale_size=s.scale_size, flip=s.flip)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{self.shards.files[item.shard].path}: sample {key}: metadata lacks a usable "
                            f"num_frames/width/height ({e!r})") from e
        labels = {}
        for head in self.shards.heads:
            value = meta.get(_label_field(head))
            label = -1 if value is None else int(value)
            if view.flip and label >= 0 and head in self.flip_maps:
                label = int(self.flip_maps[head][label])
            labels[head] = label
        return SampleSpec(item.shard, item.index, key, labels, view, item.view_id, item.valid)

    @staticmethod
    def fill_bad(samples: list[tuple[SampleSpec, Any] | None], where: str) -> list[tuple[SampleSpec, Any]]:
        """Replace failed samples (None) by a good one of the same batch, marked invalid: ranks stay in step."""
        good = next((s for s in samples if s is not None), None)
        if good is None:
            raise DataError(f"every sample of {where} is unusable (see the warnings above)")
        return [s if s is not None else (replace(good[0], valid=False), good[1]) for s in samples]


def batch_tensors(specs: list[SampleSpec], heads: dict[str, int]) -> dict[str, Any]:
    """The non-pixel part of a batch, identical for both backends."""
    return {
        "labels": {h: torch.tensor([s.labels[h] for s in specs], dtype=torch.int64) for h in heads},
        "keys": [s.key for s in specs],
        "view_ids": torch.tensor([s.view_id for s in specs], dtype=torch.int64),
        "valid": torch.tensor([s.valid for s in specs], dtype=torch.bool),
        "frame_indices": torch.from_numpy(np.stack([s.view.frame_indices for s in specs]).astype(np.int64)),
        "boxes": torch.tensor([s.view.box for s in specs], dtype=torch.int64),  # x, y, w, h in source pixels
        "flips": torch.tensor([s.view.flip for s in specs], dtype=torch.bool),
    }


# ------------------------------------------------------------------------------------------ the loader


class VideoLoader:
    """Epoch/step bookkeeping shared by the backends; a subclass turns batch ``step`` into tensors."""

    backend = ""

    def __init__(self, shards: ShardSet, settings: LoaderSettings, *, device: str, num_threads: int,
                 bad_sample: str):
        self.shards = shards
        self.settings = settings
        self.device = torch.device(device)
        self.num_threads = num_threads
        self.bad_sample = bad_sample
        self.planner = SamplePlanner(shards, settings)
        self.skipped = SkipLog()
        self._epoch = 0
        self._step = 0

    @property
    def heads(self) -> dict[str, int]:
        return dict(self.shards.heads)

    def items(self, epoch: int) -> list[PlanItem]:
        s = self.settings
        return rank_items(self.shards.shard_sizes, mode=s.mode, seed=s.seed, epoch=epoch,
                          world_size=s.world_size, rank=s.rank, batch_size=s.batch_size, window=s.shuffle_window)

    def __len__(self) -> int:
        s = self.settings
        return items_per_rank(sum(self.shards.shard_sizes), mode=s.mode, world_size=s.world_size,
                              batch_size=s.batch_size) // s.batch_size

    def set_epoch(self, epoch: int) -> None:
        self._epoch, self._step = int(epoch), 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Batches from the current position to the end of the epoch; afterwards the next epoch is current."""
        epoch, start = self._epoch, self._step
        for step, batch in self._batches(epoch, start):
            self._step = step + 1
            yield batch
        self._epoch, self._step = epoch + 1, 0

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[int, dict[str, Any]]]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "step": self._step, "settings": asdict(self.settings)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at (epoch, step); the settings must match (the rank may differ: all ranks share a position)."""
        ours = {k: v for k, v in asdict(self.settings).items() if k != "rank"}
        theirs = {k: v for k, v in state.get("settings", {}).items() if k != "rank"}
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if differ:
            raise ConfigError("loader state was saved with other settings: " + ", ".join(
                f"data.{k}: saved {theirs.get(k)!r}, now {ours.get(k)!r}" for k in differ))
        if not 0 <= int(state["step"]) <= len(self):
            raise ConfigError(f"loader state: step {state['step']} outside 0..{len(self)}")
        self._epoch, self._step = int(state["epoch"]), int(state["step"])

    def close(self) -> None:
        self.shards.close()


def _check_device(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ResourceError(f"device {device!r}: no CUDA GPU visible to torch; use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"data.device: {device!r} is neither 'cpu' nor 'cuda[:N]'")
    return str(dev)


def build_loader(shards_dir: str | os.PathLike, *, split: str = "train", mode: str = "train", batch_size: int = 8,
                 num_segments: int = 8, crop_size: int = 224, scale_size: int = 256, seed: int = 0,
                 rank: int = 0, world_size: int = 1, backend: str = "dali", device: str = "cpu",
                 num_threads: int = 2, bad_sample: str = "raise", flip: bool | None = None,
                 shuffle_window: int = DEFAULT_SHUFFLE_WINDOW, timeout_s: float = 300.0) -> VideoLoader:
    """A loader for one split of a shard directory (docs/ARCHITECTURE.md §2).

    ``flip=None`` takes the dataset's default (on for EPIC, off where classes name left/right); ``timeout_s``
    bounds the wait for one batch so a stuck worker is an error, not a hang.
    """
    check_mode(mode)
    if backend not in BACKENDS:
        raise ConfigError(f"data.backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if bad_sample not in BAD_SAMPLE_POLICIES:
        raise ConfigError(f"data.bad_sample: {bad_sample!r} is not one of {', '.join(BAD_SAMPLE_POLICIES)}")
    for name, value in (("batch_size", batch_size), ("num_segments", num_segments), ("crop_size", crop_size),
                        ("scale_size", scale_size), ("num_threads", num_threads)):
        if int(value) < 1:
            raise ConfigError(f"data.{name}: must be >= 1, got {value}")
    device = _check_device(device)
    shards = ShardSet(shards_dir, split)
    settings = LoaderSettings(split=split, mode=mode, batch_size=batch_size, num_segments=num_segments,
                              crop_size=crop_size, scale_size=scale_size, seed=seed, world_size=world_size,
                              rank=rank, flip=default_flip(shards.dataset) if flip is None else bool(flip),
                              shuffle_window=shuffle_window)
    check_partition(world_size=world_size, rank=rank, batch_size=batch_size)
    check_window(shuffle_window)
    kwargs = dict(device=device, num_threads=num_threads, bad_sample=bad_sample)
    if backend == "dali":
        from pipeline.dali_loader import DaliLoader
        return DaliLoader(shards, settings, **kwargs)
    from pipeline.reference_loader import ReferenceLoader
    return ReferenceLoader(shards, settings, timeout_s=timeout_s, **kwargs)
