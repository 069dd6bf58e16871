"""Where stage 2's teacher features come from, batch by batch: the cache (read ahead in the background,
while the model trains on the previous batch) or the frozen teacher run online on the batch's frames.

Both put ``teacher_features`` (B, T, C, h, w) and ``teacher_weight`` (B,) into the batch; the weight is 0 for
a clip whose cached record is damaged when ``data.bad_sample`` is ``skip`` (its MFR term is dropped and
counted, never silently zero).
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from pipeline.batches import Skip, SkipLog
from pipeline.errors import DataError
from train.feature_store import dequantize
from train.teacher_cache import FeatureCache

READ_AHEAD = 2          # batches read ahead of the one being trained on


class CachedTeacher:
    """Reads the (key, view) records of the steps ahead from the loader's plan; the batch the loader
    actually yields is checked against it (a substituted bad sample is read on the spot)."""

    is_data = True          # waiting for it is waiting for data (the run log's data_wait_frac)

    def __init__(self, cache: FeatureCache, loader, device: torch.device, *, skip_bad: bool):
        self.cache, self.loader, self.device, self.skip_bad = cache, loader, device, skip_bad
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher-cache")
        self.pending: dict[int, Future] = {}
        self.plan: list[tuple[list[str], list[int]]] = []
        self.epoch = 0
        self.skipped = SkipLog()          # clips whose MFR term was dropped (a damaged record, under skip)

    def start_epoch(self, epoch: int, start: int) -> None:
        self.epoch = epoch
        for future in self.pending.values():
            future.cancel()
        self.pending.clear()
        self.plan = self.loader.planned_batches(epoch)
        for step in range(start, min(start + READ_AHEAD, len(self.plan))):
            self._schedule(step)

    def _schedule(self, step: int) -> None:
        if 0 <= step < len(self.plan) and step not in self.pending:
            keys, views = self.plan[step]
            self.pending[step] = self.pool.submit(self._read, keys, views)

    def _read(self, keys: list[str], views: list[int]) -> tuple[torch.Tensor, torch.Tensor | None, list]:
        """Stored values and scales of a batch, pinned for an asynchronous copy; damaged records -> zeros
        with weight 0 (skip) or the DataError (raise)."""
        records, bad = [], []
        for i, (key, view) in enumerate(zip(keys, views)):
            try:
                records.append(self.cache.read_record(key, view))
            except DataError as err:
                if not self.skip_bad:
                    raise
                bad.append((i, key, view, str(err)))
                records.append(None)
        good = next((r for r in records if r is not None), None)
        if good is None:
            raise DataError(f"teacher cache {self.cache.root}: every record of a batch is unusable "
                            f"({bad[0][3] if bad else 'empty batch'})")
        values = torch.stack([torch.from_numpy((r or good)[0]) for r in records])
        scales = torch.stack([torch.from_numpy((r or good)[1]) for r in records]) if good[1] is not None else None
        if self.device.type == "cuda":
            values = values.pin_memory()
            scales = scales.pin_memory() if scales is not None else None
        return values, scales, bad

    def attach(self, batch: dict[str, Any], step: int) -> None:
        keys, views = batch["keys"], batch["view_ids"].tolist()
        planned = self.plan[step] if step < len(self.plan) else None
        future = self.pending.pop(step, None)
        self._schedule(step + READ_AHEAD)
        if future is not None and planned == (keys, views):
            values, scales, bad = future.result()
        else:                           # the loader substituted a sample (bad_sample: skip): read this batch now
            values, scales, bad = self._read(keys, views)
        weight = torch.ones(len(keys))
        for i, key, view, reason in bad:
            weight[i] = 0.0
            self.skipped.add(Skip(self.epoch, step, str(self.cache.root), f"{key} view {view}",
                                  f"MFR term dropped: {reason}"))
        values = values.to(self.device, non_blocking=True)
        scales = scales.to(self.device, non_blocking=True) if scales is not None else None
        batch["teacher_features"] = dequantize(values, scales)
        batch["teacher_weight"] = weight.to(self.device)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.cache.close()


class OnlineTeacher:
    """The frozen teacher in eval mode, without gradients, on the batch's own frames (the baseline the cache
    is measured against, and the way to run stage 2 without disk for a cache)."""

    is_data = False         # its forward pass is compute, not a wait for data

    def __init__(self, model: torch.nn.Module, autocast):
        self.model, self.autocast = model.eval().requires_grad_(False), autocast
        self.skipped = SkipLog()

    def start_epoch(self, epoch: int, start: int) -> None:
        pass

    @torch.no_grad()
    def attach(self, batch: dict[str, Any], step: int) -> None:
        with self.autocast():
            batch["teacher_features"] = self.model(batch["frames"])["features"].float()
        batch["teacher_weight"] = torch.ones(len(batch["keys"]), device=batch["frames"].device)

    def close(self) -> None:
        pass
