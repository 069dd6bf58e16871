"""A run whose numbers went NaN/inf stops with a NumericError; nothing non-finite is saved or exported.

The loss is watched on the device: each optimiser step updates three counters there (the current run of
non-finite steps, the longest run, the total), so the hot path never waits for the device. The counters
are read, and agreed over ranks, only where the loop syncs anyway (log steps) and before anything is
saved or evaluated. The weights are checked before every checkpoint and evaluation, so a non-finite model
is never saved, never scored, and never becomes "best".
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from pipeline.errors import NumericError


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _max_over_ranks(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


class LossWatch:
    """`add(loss)` per micro-batch, `end_step()` per optimiser step, `check(step)` where syncing is fine.
    `limit`: consecutive non-finite steps that stop the run (train.max_nonfinite_steps)."""

    def __init__(self, limit: int, device: torch.device, label: str):
        self.limit, self.label = limit, label
        self._loss = torch.zeros((), dtype=torch.float64, device=device)
        self._run = torch.zeros((), dtype=torch.int64, device=device)
        self._counts = torch.zeros(2, dtype=torch.int64, device=device)     # longest run, total
        self._reported = 0

    def add(self, loss: torch.Tensor) -> None:
        self._loss += loss.detach()

    def end_step(self) -> None:
        bad = ~torch.isfinite(self._loss)
        self._run = torch.where(bad, self._run + 1, 0)
        self._counts[0] = torch.maximum(self._counts[0], self._run)
        self._counts[1] += bad
        self._loss.zero_()

    def check(self, step: int) -> None:
        """Every rank calls this at the same step (a collective); raises on all of them at once."""
        longest, total = _max_over_ranks(self._counts).tolist()
        if longest >= self.limit:
            raise NumericError(
                f"the loss was not finite (NaN or inf) in {longest} optimiser step(s) in a row by step {step} "
                f"({total} such step(s) in all; {self.label} = {self.limit}). The weights are most likely "
                f"non-finite too, so nothing is saved from here on; resume from the last checkpoint with a "
                f"lower learning rate (optim.lr_per_64) or check the data")
        if total > self._reported and _rank() == 0:
            print(f"warning: step {step}: {total - self._reported} more optimiser step(s) with a non-finite "
                  f"loss ({total} in all; the run stops at {self.limit} in a row, {self.label})", flush=True)
        self._reported = total


def _local_tensors(model: torch.nn.Module):
    """Parameters and buffers as this rank holds them (ZeRO-3 keeps each parameter's shard in ds_tensor)."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        yield name, getattr(tensor, "ds_tensor", tensor)


@torch.no_grad()
def check_weights(model: torch.nn.Module, when: str) -> None:
    """A NumericError on every rank when any rank holds a non-finite weight (a collective call)."""
    named = [(name, t) for name, t in _local_tensors(model) if t.is_floating_point() and t.numel()]
    device = next(model.parameters()).device
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]) if named else \
        torch.ones(1, dtype=torch.bool, device=device)                # one sync below, not one per tensor
    if not _max_over_ranks((~finite).sum().reshape(1)).item():
        return
    bad = [name for (name, _), ok in zip(named, finite.tolist()) if not ok]
    where = f" ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''} on this rank)" if bad else ""
    raise NumericError(f"the model's weights are not finite (NaN or inf){where}; not {when}. Resume from the "
                       f"last checkpoint with a lower learning rate (optim.lr_per_64) or check the data")


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold a NaN or an inf."""
    return [name for name, t in state.items()
            if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
