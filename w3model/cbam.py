"""CBAM (Woo et al., ECCV 2018) applied to every frame: the TSM+CBAM baseline of the paper's Table 6."""
from __future__ import annotations

import torch
from torch import nn

from w3model.gates import AttentionInit, ChannelGate, SpatialGate, shrink_, to_mask


class CBAM(nn.Module):
    """Channel gate then spatial gate, each frame on its own (no temporal reasoning)."""

    def __init__(self, channels: int, reduction: int = 16, init: AttentionInit = "identity", norm: bool = True):
        super().__init__()
        self.init = init
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate(norm=norm)
        if init == "identity":
            shrink_(self.channel.mlp[-1])
            shrink_(self.spatial.bn if self.spatial.bn is not None else self.spatial.conv)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        channel = to_mask(self.channel(x), self.init).to(x.dtype)  # (NT, C)
        x = x * channel[:, :, None, None]
        spatial = to_mask(self.spatial(x), self.init).to(x.dtype)  # (NT, 1, H, W)
        return x * spatial, {"channel": channel, "spatial": spatial[:, 0]}
