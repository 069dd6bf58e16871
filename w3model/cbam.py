"""CBAM (Woo et al., ECCV 2018) applied to every frame: the TSM+CBAM baseline of the paper's Tables 6-7.

As the official code (see :mod:`w3model.gates`): channel gate then spatial gate, biases 0, the spatial
BatchNorm (momentum 0.01) with weight 0 at the start, sigmoid masks. With ``attention_init: paper`` the
module is the official one; with ``identity`` (the project's default, for every attention module alike)
the masks are 2*sigmoid and the channel MLP's last layer starts x0.01, so both masks start at ~1 and an
ImageNet trunk computes at step 0 what it computed without CBAM (official CBAM halves each residual
twice). It outputs the last stage's features like every arch, so a CBAM run can be an MFR teacher
(Table 7, "CBAM w/ MFR").
"""
from __future__ import annotations

import torch
from torch import nn

from w3model.gates import AttentionInit, ChannelGate, SpatialGate, start_as_masks_, to_mask


class CBAM(nn.Module):
    """Channel gate then spatial gate, each frame on its own (no temporal reasoning)."""

    def __init__(self, channels: int, reduction: int = 16, init: AttentionInit = "identity", norm: bool = True):
        super().__init__()
        self.init = init
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate(norm=norm)
        start_as_masks_(self.channel, self.spatial, init)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        channel = to_mask(self.channel(x), self.init).to(x.dtype)  # (NT, C)
        x = x * channel[:, :, None, None]
        spatial = to_mask(self.spatial(x), self.init).to(x.dtype)  # (NT, 1, H, W)
        return x * spatial, {"channel": channel, "spatial": spatial[:, 0]}
