"""What both loader backends share: a planned sample's spec, the batch tensors besides the pixels, the
bad-sample log, and the epoch/step bookkeeping that makes a loader resumable.

The backends (``pipeline.dali_loader``, ``pipeline.reference_loader``) differ only in how a batch of planned
samples becomes pixels; both import from here and from ``pipeline.shard_set``, never from each other or from
the factory ``pipeline.loader``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import numpy as np
import torch

from pipeline.errors import ConfigError, DataError
from pipeline.loader_settings import LoaderSettings
from pipeline.plan import PlanItem, View, bank_view, flip_label_map, items_per_rank, make_view, rank_items
from pipeline.sample_json import head_labels
from pipeline.shard_set import SampleError, ShardSet

log = logging.getLogger("pipeline.loader")

REPLAY_EPOCH = -1          # the epoch a replayed batch's skips are logged under
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


@dataclass(frozen=True)
class Skip:
    """One planned sample replaced under ``bad_sample='skip'``: where in the run, which sample, and why."""

    epoch: int
    batch: int
    shard: str
    key: str
    reason: str


@dataclass
class SkipLog:
    """Every replacement of a bad sample, once per (epoch, batch, sample): a bad clip is counted in every
    epoch it is not trained on. A backend may prepare a batch twice (DALI, after a failed pipeline); that
    is counted once. The trainer's run log writes these out (train/run_log.py)."""

    entries: list[Skip] = field(default_factory=list)
    _seen: set = field(default_factory=set, repr=False)

    def add(self, skip: Skip) -> None:
        ident = (skip.epoch, skip.batch, skip.shard, skip.key)
        if ident in self._seen:
            return
        self._seen.add(ident)
        self.entries.append(skip)
        log.warning("skipping bad sample %s in %s (epoch %d, batch %d: %s); %d skipped so far", skip.key,
                    skip.shard, skip.epoch, skip.batch, skip.reason, len(self.entries))


class SamplePlanner:
    """Turns plan items into sample specs: reads metadata, computes the view, maps labels under flip."""

    def __init__(self, shards: ShardSet, settings: LoaderSettings):
        self.shards = shards
        self.settings = settings
        self.flip_maps = {h: flip_label_map(self.shards.classes[h]) for h in shards.heads if h in shards.classes}

    def spec(self, item: PlanItem, meta: dict) -> SampleSpec:
        """A SampleError when the metadata gives no usable frame count or size, or a label outside the
        manifest's class counts."""
        s = self.settings
        key = meta.get("key") or self.shards.key(item.shard, item.index)
        try:
            view = make_view(mode=s.mode, seed=s.seed, key=key, view_id=item.view_id,
                             num_frames=int(meta["num_frames"]), width=int(meta["width"]),
                             height=int(meta["height"]), num_segments=s.num_segments, crop_size=s.crop_size,
                             scale_size=s.scale_size, flip=bool(s.flip))
        except (KeyError, TypeError, ValueError) as e:
            raise SampleError(self.shards.files[item.shard].path, key,
                              f"metadata lacks a usable num_frames/width/height ({e!r})") from e
        try:
            found = head_labels(meta, self.shards.heads)
        except DataError as e:
            raise SampleError(self.shards.files[item.shard].path, key, str(e)) from None
        labels = {}
        for head, value in found.items():
            label = -1 if value is None else value
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
    """Epoch/step bookkeeping shared by the backends; a subclass turns batch ``step`` into tensors.

    ``rank`` of ``world_size`` ranks reads its own contiguous part of each epoch's plan; ``settings.flip``
    is resolved (build_loader puts the dataset's default where the user left it open).
    """

    backend = ""

    def __init__(self, shards: ShardSet, settings: LoaderSettings, *, rank: int, world_size: int,
                 device: torch.device):
        self.shards = shards
        self.settings = settings
        self.rank, self.world_size = rank, world_size
        self.device = device
        self.planner = SamplePlanner(shards, settings)
        self.skipped = SkipLog()
        self._epoch = 0
        self._step = 0

    @property
    def heads(self) -> dict[str, int]:
        return dict(self.shards.heads)

    def items(self, epoch: int) -> list[PlanItem]:
        """This rank's items of ``epoch``; training views come from the bank when there is one."""
        s = self.settings
        items = rank_items(self.shards.shard_sizes, mode=s.mode, seed=s.seed, epoch=epoch,
                           world_size=self.world_size, rank=self.rank, batch_size=s.batch_size,
                           window=s.shuffle_window)
        if s.mode == "train" and s.train_views:
            items = [replace(it, view_id=bank_view(s.seed, self.shards.key(it.shard, it.index), epoch,
                                                   s.train_views)) for it in items]
        return items

    def planned_batches(self, epoch: int) -> list[tuple[list[str], list[int]]]:
        """(keys, view ids) of every batch of ``epoch`` on this rank, known before any is decoded (the
        teacher cache reads ahead from it)."""
        items, b = self.items(epoch), self.settings.batch_size
        return [([self.shards.key(it.shard, it.index) for it in chunk], [it.view_id for it in chunk])
                for chunk in (items[i * b:(i + 1) * b] for i in range(len(self)))]

    def replay(self, items: list[PlanItem]) -> Iterator[dict[str, Any]]:
        """Batches of exactly ``items`` (e.g. every view of a shard's clips, for the teacher cache), in order;
        the last batch is filled up with repeats of its first item marked ``valid=False``."""
        b = self.settings.batch_size
        if not items:
            return
        padded = list(items)
        if len(items) % b:
            filler = replace(items[len(items) // b * b], valid=False)
            padded += [filler] * (b - len(items) % b)
        for _, batch in self._batches(padded, REPLAY_EPOCH, 0):
            yield batch

    def __len__(self) -> int:
        s = self.settings
        return items_per_rank(sum(self.shards.shard_sizes), mode=s.mode, world_size=self.world_size,
                              batch_size=s.batch_size) // s.batch_size

    def set_epoch(self, epoch: int) -> None:
        self._epoch, self._step = int(epoch), 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Batches from the current position to the end of the epoch; afterwards the next epoch is current."""
        epoch, start = self._epoch, self._step
        for step, batch in self._batches(self.items(epoch), epoch, start):
            self._step = step + 1
            yield batch
        self._epoch, self._step = epoch + 1, 0

    def _batches(self, items: list[PlanItem], epoch: int, start: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """(step, batch) for batches ``start..`` of ``items`` (whole batches) of ``epoch`` (for the skip log;
        REPLAY_EPOCH for ``replay``)."""
        raise NotImplementedError

    def _plan(self) -> dict[str, Any]:
        return {**self.settings.plan(), "world_size": self.world_size}

    def state_dict(self) -> dict[str, Any]:
        """Plain data (JSON-safe): the position and the settings that decide the batches."""
        return {"epoch": self._epoch, "step": self._step, "settings": self._plan()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at (epoch, step); the plan settings must match (all ranks share one position)."""
        ours, theirs = self._plan(), dict(state.get("settings", {}))
        theirs.pop("rank", None)
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if differ:
            raise ConfigError("loader state was saved with other settings: " + ", ".join(
                f"{self.settings.label(k)}: saved {theirs.get(k)!r}, now {ours.get(k)!r}" for k in differ))
        if not 0 <= int(state["step"]) <= len(self):
            raise ConfigError(f"loader state: step {state['step']} outside 0..{len(self)}")
        self._epoch, self._step = int(state["epoch"]), int(state["step"])

    def close(self) -> None:
        self.shards.close()
