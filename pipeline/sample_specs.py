"""A planned sample's spec, and the planner that makes it from a plan item and the sample's metadata.

Apart from ``pipeline.batches`` (which needs torch) because DALI's parallel-source workers plan samples too
(pipeline/dali_source.py): they are spawned processes, and each import costs their start-up.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from collections.abc import Sequence
from typing import Any, TypeVar

from pipeline.errors import DataError
from pipeline.loader_settings import LoaderSettings
from pipeline.plan import PlanItem, View, bank_view, flip_label_map, make_view, rank_items
from pipeline.sample_json import head_labels
from pipeline.shard_set import SampleError, ShardSet

T = TypeVar("T")


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


@dataclass(frozen=True, eq=False)
class EpochPlan:
    """This rank's plan items of any epoch: a pure function of (shards, settings, rank), small and picklable,
    so that DALI's source workers can compute each epoch's items themselves and live across epochs."""

    shards: ShardSet
    settings: LoaderSettings
    rank: int
    world_size: int

    def __call__(self, epoch: int) -> list[PlanItem]:
        """Training views come from the bank when there is one."""
        s = self.settings
        items = rank_items(self.shards.shard_sizes, mode=s.mode, seed=s.seed, epoch=epoch,
                           world_size=self.world_size, rank=self.rank, batch_size=s.batch_size,
                           window=s.shuffle_window)
        if s.mode == "train" and s.train_views:
            items = [replace(it, view_id=bank_view(s.seed, self.shards.key(it.shard, it.index), epoch,
                                                   s.train_views)) for it in items]
        return items


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
        good = substitute(samples, where)
        return [s if s is not None else (replace(good[0], valid=False), good[1]) for s in samples]


def substitute(slots: Sequence[T | None], where: str) -> T:
    """What stands in for a failed sample (None) of a batch: its first usable sample. The one rule, used by
    the main process (``SamplePlanner.fill_bad``) and by DALI's source workers (pipeline/dali_source.py)."""
    good = next((s for s in slots if s is not None), None)
    if good is None:
        raise DataError(f"every sample of {where} is unusable (see the warnings above)")
    return good
