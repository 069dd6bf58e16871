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

import numpy as np

from pipeline.sample_specs import SampleSpec, SamplePlanner, substitute
from pipeline.plan import PlanItem


def sample_arrays(spec: SampleSpec, video: bytes) -> tuple[np.ndarray, ...]:
    """What the pipeline's external source gives per sample: encoded clip, frame indices, ROI start and end
    (DALI's shape order, H then W) and the mirror flag."""
    x, y, w, h = spec.view.box
    return (np.frombuffer(video, np.uint8), spec.view.frame_indices, np.array([y, x], np.float32),
            np.array([y + h, x + w], np.float32), np.array(int(spec.view.flip), np.int32))


class ClipSource:
    """Sample ``info.idx_in_batch`` of batch ``start + info.iteration`` of ``items``; ``bad`` holds the
    (shard, index) pairs to substitute. Small and picklable: the planner carries the ShardSet (its parsed
    index tables, not its open files)."""

    def __init__(self, planner: SamplePlanner, items: list[PlanItem], batch_size: int, start: int,
                 bad: frozenset[tuple[int, int]]):
        self.planner, self.items, self.batch_size, self.start, self.bad = planner, items, batch_size, start, bad
        self.steps = len(items) // batch_size

    def _item(self, step: int, slot: int) -> PlanItem:
        batch = self.items[step * self.batch_size:(step + 1) * self.batch_size]
        usable = [None if (it.shard, it.index) in self.bad else it for it in batch]
        return usable[slot] if usable[slot] is not None else substitute(usable, f"batch {step}")

    def __call__(self, info) -> tuple[np.ndarray, ...]:
        step = self.start + info.iteration
        if step >= self.steps:
            raise StopIteration
        item = self._item(step, info.idx_in_batch)
        meta, video = self.planner.shards.read(item.shard, item.index)
        return sample_arrays(self.planner.spec(item, meta), video)
