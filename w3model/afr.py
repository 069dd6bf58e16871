"""Attention-guided feature refinement (paper 3.4, Eq. 7-8).

Each stage's spatial attention map is average-pooled to the last stage's size, the N maps are
concatenated, one 1x1 conv to C_l channels with ReLU turns them into a refining map, which is added to
the last-stage features: ``y = x + ReLU(conv1x1([AAP(M^1), ..., AAP(M^N)]))``. The path is a shortcut
from the loss to every attention module (deep supervision).

Which map stands for a stage is not said; ``source="mean"`` averages the maps of all blocks of the stage,
so every attention module is on the shortcut (the paper's argument for AFR); ``"last"`` takes the stage's
last block.

Start (``model.afr_init``): ``default`` keeps PyTorch's initialisation of the conv. ``small`` scales it
by 0.01 (bias 0), so ``y`` starts within about 1 % of ``x``; but the gradient the shortcut carries back
to the masks is the conv's weights times the gradient at ``y``, so it starts 100x smaller too, and ``y``
feeds only a freshly initialised classifier: there is nothing pretrained to protect. Measured on the
order-only benchmark (``docs/BENCHMARKS.md``).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from w3model.gates import shrink_


class AttentionFeatureRefinement(nn.Module):
    def __init__(self, num_stages: int, out_channels: int, source: Literal["mean", "last"] = "mean",
                 init: Literal["default", "small"] = "small"):
        super().__init__()
        self.source = source
        self.conv = nn.Conv2d(num_stages, out_channels, kernel_size=1)
        if init == "small":
            shrink_(self.conv)

    def stage_map(self, block_maps: list[torch.Tensor]) -> torch.Tensor:
        """One stage's spatial map (N*T, H, W) from its blocks' maps."""
        return torch.stack(block_maps).mean(0) if self.source == "mean" else block_maps[-1]

    def forward(self, x: torch.Tensor, stage_maps: list[list[torch.Tensor]]) -> torch.Tensor:
        """``x`` (N*T, C_l, h, w); ``stage_maps`` per stage, the blocks' spatial maps (N*T, H_j, W_j)."""
        size = x.shape[-2:]
        pooled = [F.adaptive_avg_pool2d(self.stage_map(maps)[:, None], size) for maps in stage_maps]
        refine = F.relu(self.conv(torch.cat(pooled, dim=1).to(x.dtype)))  # Eq. 7-8
        return x + refine
