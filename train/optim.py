"""SGD over the model's TSM parameter groups, and the per-step learning-rate schedule.

The schedule is a LambdaLR multiplier of optimiser steps (not epochs), so a mid-epoch resume restores it
exactly; each group keeps its own policy lr (TSM: e.g. x5 for the new classifier) times the multiplier.
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


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict, steps_per_epoch: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, cfg=cfg, steps_per_epoch=steps_per_epoch))
