"""What the trainer minimises, chosen by ``train.objective`` (SlowFast keeps its losses apart from its epoch
loop in the same way):

- ``classification`` (stage 1): cross-entropy summed over the heads (EPIC: verb + noun), plus the stage-1
  "AFR loss" when ``model.afr_loss_weight`` > 0 (the same heads' cross-entropy on the features before
  refinement: deep supervision, w3model.ModelConfig).
- ``mfr`` (stage 2, paper §3.4): the same cross-entropy + ``mfr.weight`` x L_fm, the feature-mimicking loss of
  Eq. 9 between the student's refined features y_Q and the teacher's y_P of the same clip and view. The
  teacher's features come from the cache (``mfr.source: cache``) or from running the frozen teacher on the
  batch (``online``).

An objective returns the loss to back-propagate and its terms, detached, for the run log.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "frame_sum")


def classification_loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over heads of cross-entropy (EPIC: verb + noun); label -1 = none."""
    return sum(F.cross_entropy(out.float(), labels[head].to(out.device), ignore_index=-1)
               for head, out in logits.items())


def feature_mimicking_loss(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor,
                           reduction: str = "mean") -> torch.Tensor:
    """Eq. 9, ``||y_Q - y_P||^2`` per frame, then the mean over frames and over the clips with teacher
    features (``weight`` 1, else 0: a clip whose cached record is damaged under ``bad_sample: skip``).

    ``mean`` divides each frame's squared norm by C*h*w (a per-element mean squared error), so one
    ``mfr.weight`` suits any backbone and resolution; ``frame_sum`` keeps the paper's plain squared norm.
    """
    diff = (student.float() - teacher.float()).pow(2).flatten(2)        # (B, T, C*h*w)
    per_frame = diff.mean(-1) if reduction == "mean" else diff.sum(-1)
    per_clip = per_frame.mean(1)
    weight = weight.to(per_clip)
    return (per_clip * weight).sum() / weight.sum().clamp_min(1.0)


class Classification:
    """Stage 1: cross-entropy on the refined features y, plus ``afr_loss_weight`` x the cross-entropy on
    the unrefined x when the model computes it (``out["unrefined_logits"]``)."""

    name = "classification"
    needs_teacher = False

    def __init__(self, afr_loss_weight: float = 0.0):
        self.afr_loss_weight = afr_loss_weight

    def __call__(self, out: dict[str, Any], batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = ce = classification_loss(out["logits"], batch["labels"])
        terms = {"ce": ce.detach()}
        if "unrefined_logits" in out:
            afr = classification_loss(out["unrefined_logits"], batch["labels"])
            loss = ce + self.afr_loss_weight * afr
            terms["afr_ce"] = afr.detach()
        return loss, terms


class MatureFeatureRegularization(Classification):
    """Stage 2: stage 1's objective + weight x L_fm; the batch brings ``teacher_features`` and
    ``teacher_weight`` (train/teacher_features.py)."""

    name = "mfr"
    needs_teacher = True

    def __init__(self, weight: float, reduction: str, afr_loss_weight: float = 0.0):
        super().__init__(afr_loss_weight)
        self.weight, self.reduction = weight, reduction

    def __call__(self, out: dict[str, Any], batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, terms = super().__call__(out, batch)
        fm = feature_mimicking_loss(out["features"], batch["teacher_features"], batch["teacher_weight"],
                                    self.reduction)
        terms["fm"] = fm.detach()
        return loss + self.weight * fm, terms


def build_objective(cfg: dict, afr_loss_weight: float):
    """``train.objective``'s objective; ``afr_loss_weight`` is the model's (model.afr_loss_weight)."""
    if cfg["train"]["objective"] == "mfr":
        return MatureFeatureRegularization(cfg["mfr"]["weight"], cfg["mfr"]["reduction"], afr_loss_weight)
    return Classification(afr_loss_weight)
