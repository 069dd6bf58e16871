"""The DALI backend's per-sample source, for DALI's parallel ``external_source`` (worker processes).

Reading a sample (tar bytes by offset, CRC-32 of every member, JSON, the plan's view) is Python work; in
batch mode it runs on the thread that also drives the pipeline. Because the plan is a pure function of
(item, metadata), one sample can be made anywhere from its position in the epoch alone: this callable is
pickled into DALI's worker processes and answers ``SampleInfo`` -> one sample's arrays.

The workers decide nothing: samples already known to be bad when the pipeline is built are substituted
by the rule ``SamplePlanner.fill_bad`` follows in the main process (``substitute``: the first usable sample
of the batch); any new failure is raised, and the loader re-reads the batches in flight in its own process,
where the error gets its usual message and the skip its record (pipeline/dali_loader.py).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.sample_specs import SampleSpec, SamplePlanner, substitute
from pipeline.plan import PlanItem


def sample_arrays(spec: SampleSpec, video: bytes) -> tuple[np.ndarray, ...]:
    """What the pipeline's external source gives per sample: encoded clip, frame indices, ROI start and end
    (DALI's shape order, H then W) and the mirror flag."""
    x, y, w, h = spec.view.box
    return (np.frombuffer(video, np.uint8), spec.view.frame_indices, np.array([y, x], np.float32),
            np.array([y + h, x + w], np.float32), np.array(int(spec.view.flip), np.int32))


class FixedItems:
    """The same items whatever the epoch (``VideoLoader.replay``): a source of one pass, never kept."""

    def __init__(self, items: list[PlanItem]):
        self.items = items

    def __call__(self, epoch: int) -> list[PlanItem]:
        return self.items


class ClipSource:
    """Sample ``info.idx_in_batch`` of batch ``info.iteration`` of epoch ``first_epoch + info.epoch_idx``
    (DALI counts the pipeline's resets in ``epoch_idx``); the first epoch begins at batch ``start``. The
    items of an epoch come from ``items_of`` (an :class:`~pipeline.sample_specs.EpochPlan`), computed in the
    worker, so one pipeline and its workers serve epoch after epoch. ``bad`` holds the (shard, index) pairs
    known to be bad when the pipeline was built, to substitute. Small and picklable: the planner carries the
    ShardSet (its parsed index tables, not its open files)."""

    def __init__(self, planner: SamplePlanner, items_of: Callable[[int], list[PlanItem]], first_epoch: int,
                 start: int, batch_size: int, bad: frozenset[tuple[int, int]]):
        self.planner, self.items_of, self.first_epoch, self.start = planner, items_of, first_epoch, start
        self.batch_size, self.bad = batch_size, bad
        self._epoch: tuple[int, list[PlanItem]] | None = None

    def _items(self, epoch: int) -> list[PlanItem]:
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self.items_of(epoch))
        return self._epoch[1]

    def _item(self, items: list[PlanItem], step: int, slot: int) -> PlanItem:
        batch = items[step * self.batch_size:(step + 1) * self.batch_size]
        usable = [None if (it.shard, it.index) in self.bad else it for it in batch]
        return usable[slot] if usable[slot] is not None else substitute(usable, f"batch {step}")

    def __call__(self, info) -> tuple[np.ndarray, ...]:
        items = self._items(self.first_epoch + info.epoch_idx)
        step = (self.start if info.epoch_idx == 0 else 0) + info.iteration
        if step >= len(items) // self.batch_size:
            raise StopIteration
        item = self._item(items, step, info.idx_in_batch)
        meta, video = self.planner.shards.read(item.shard, item.index)
        return sample_arrays(self.planner.spec(item, meta), video)
