"""SGD over the model's TSM parameter groups, and the per-step learning-rate schedule.

The schedule is a multiplier of optimiser steps (not epochs), so a mid-epoch resume restores it exactly from
the step alone; each group keeps its own policy lr (TSM: e.g. x5 for the new classifier) times the multiplier.
"""
from __future__ import annotations

import bisect
import math

import torch


def build_optimizer(model: torch.nn.Module, cfg: dict, lr: float) -> torch.optim.SGD:
    optim = cfg["optim"]
    groups = model.param_groups(lr=lr, weight_decay=optim["weight_decay"])
    return torch.optim.SGD(groups, lr=lr, momentum=optim["momentum"], weight_decay=optim["weight_decay"])


def lr_multiplier(step: int, *, cfg: dict, steps_per_epoch: int) -> float:
    """Linear warm-up from 0, then x lr_decay at each of lr_steps (epochs), or cosine to 0."""
    optim = cfg["optim"]
    total = cfg["train"]["epochs"] * steps_per_epoch
    warmup = int(round(optim["warmup_epochs"] * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if optim["schedule"] == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    milestones = [e * steps_per_epoch for e in optim["lr_steps"]]
    return optim["lr_decay"] ** bisect.bisect_right(milestones, step)


class StepSchedule:
    """Sets every group's lr for an optimiser step: its policy lr times `lr_multiplier(step)`. A pure
    function of the step, so a checkpoint stores nothing for it (a torch scheduler would be pickled, and
    accelerate reloads registered objects with `weights_only off`)."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: dict, steps_per_epoch: int):
        self.optimizer, self.cfg, self.steps_per_epoch = optimizer, cfg, steps_per_epoch
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]

    def apply(self, step: int) -> float:
        """Set the lrs of optimiser step `step` (0-based); returns the first group's."""
        multiplier = lr_multiplier(step, cfg=self.cfg, steps_per_epoch=self.steps_per_epoch)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):   # groups are new after a load
            group["lr"] = base * multiplier
        return self.optimizer.param_groups[0]["lr"]
