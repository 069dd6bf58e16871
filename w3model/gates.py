"""The frame-level attention gates shared by CBAM and W3, and how a gate becomes a mask.

W3's frame-level parts (paper Eq. 3 and 5) are CBAM's channel and spatial gates (Woo et al.); W3 adds
the video-level temporal networks on top. Keeping one implementation makes the TSM+CBAM vs TSM+W3
comparison differ only in what the paper adds.

The gates are initialised as CBAM's official code (Jongchan/attention-module, ``MODELS/cbam.py`` and the
initialisation loop of ``MODELS/model_resnet.py``) does: every bias 0, the 7x7 conv Kaiming-normal
(fan_out), BatchNorm momentum 0.01 after it; where a gate's output is itself the mask (CBAM, W3 without
its temporal networks) the spatial BatchNorm weight starts at 0 (:func:`start_as_masks_`). Its spatial
pooling stacks [max, mean]; here it is [mean, max], the same gate with the conv's two input channels
swapped (their initial weights are i.i.d.).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from w3model.masking import PoolHW

AttentionInit = Literal["identity", "paper"]
# Scale applied to the last layer before an "identity" mask: small enough that every mask starts
# within about 1 % of 1, large enough that every earlier layer receives a gradient at step 0.
IDENTITY_INIT_SCALE = 0.01
CBAM_BN_MOMENTUM = 0.01        # BasicConv of the official code: BatchNorm2d(eps=1e-5, momentum=0.01)


class ChannelGate(nn.Module):
    """Avg- and max-pooled channel descriptors through one shared bottleneck MLP, summed (Eq. 3).

    Returns the logits ``(N, C)``; the caller applies the sigmoid.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_pooled(*PoolHW.apply(x))

    def from_pooled(self, mean: torch.Tensor, max_: torch.Tensor) -> torch.Tensor:
        """The logits from the (N, C) mean and max descriptors."""
        return self.mlp(mean) + self.mlp(max_)


class SpatialGate(nn.Module):
    """Channel-wise mean and max maps, concatenated, one 7x7 conv per frame (Eq. 5).

    Returns the logits ``(N, 1, H, W)``. With ``norm`` a BatchNorm follows the conv, as in CBAM.
    """

    def __init__(self, kernel_size: int = 7, norm: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=not norm)
        self.bn = nn.BatchNorm2d(1, momentum=CBAM_BN_MOMENTUM) if norm else None
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_pooled(x.mean(dim=1), _max(x, dim=1))

    def from_pooled(self, mean: torch.Tensor, max_: torch.Tensor) -> torch.Tensor:
        """The logits from the (N, H, W) channel mean and max maps."""
        out = self.conv(torch.stack([mean, max_], dim=1))
        return self.bn(out) if self.bn is not None else out


def _max(x: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    """Max pooling along ``dim``. ``max`` rather than ``amax``: its backward scatters through the argmax
    indices instead of comparing the whole feature map with the result, about 3x cheaper on the CPU."""
    return x.max(dim=dim, keepdim=keepdim).values


def to_mask(logits: torch.Tensor, init: AttentionInit) -> torch.Tensor:
    """``paper``: sigmoid, a mask in (0, 1). ``identity``: 2*sigmoid, a mask in (0, 2) equal to 1 at
    logit 0, so a gate whose last layer starts small leaves the features it multiplies unchanged."""
    mask = torch.sigmoid(logits)
    return mask * 2 if init == "identity" else mask


@torch.no_grad()
def start_as_masks_(channel: ChannelGate | None, spatial: SpatialGate | None, init: AttentionInit) -> None:
    """Where the frame-level gates are the masks: CBAM's start, the spatial BatchNorm weight 0 (so the
    spatial mask is sigmoid(0): 0.5, or 1 under ``identity``'s 2*sigmoid); ``identity`` also shrinks the
    channel MLP's last layer so that the channel mask starts at ~1 (CBAM itself starts it near 0.5)."""
    if spatial is not None:
        if spatial.bn is not None:
            spatial.bn.weight.zero_()
        elif init == "identity":     # no BatchNorm (w3_norm: none): the conv itself starts small
            shrink_(spatial.conv)
    if channel is not None and init == "identity":
        shrink_(channel.mlp[-1])


@torch.no_grad()
def shrink_(layer: nn.Module, scale: float = IDENTITY_INIT_SCALE) -> None:
    """Make a gate's last layer start near zero output (see :func:`to_mask`)."""
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        layer.weight.fill_(scale)
    else:
        layer.weight.mul_(scale)
    if layer.bias is not None:
        layer.bias.zero_()
