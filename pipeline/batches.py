"""What both loader backends share: the batch tensors besides the pixels, the bad-sample log, and the
epoch/step bookkeeping that makes a loader resumable (a planned sample's spec: ``pipeline.sample_specs``).

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

from pipeline.errors import ConfigError
from pipeline.loader_settings import LoaderSettings
from pipeline.plan import PlanItem, items_per_rank
from pipeline.sample_specs import EpochPlan, SamplePlanner, SampleSpec
from pipeline.shard_set import ShardSet

log = logging.getLogger("pipeline.loader")

REPLAY_EPOCH = -1          # the epoch a replayed batch's skips are logged under
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        self.epoch_plan = EpochPlan(shards, settings, rank, world_size)
        self.skipped = SkipLog()
        self._epoch = 0
        self._step = 0

    @property
    def heads(self) -> dict[str, int]:
        return dict(self.shards.heads)

    def items(self, epoch: int) -> list[PlanItem]:
        """This rank's items of ``epoch`` (pipeline.sample_specs.EpochPlan)."""
        return self.epoch_plan(epoch)

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
