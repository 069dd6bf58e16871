"""W3 "What-Where-When" video attention (Perez-Rua et al., paper sections 3.1-3.2).

``F -> Fc = Mc * F -> Fs = Ms * Fc`` (Eq. 2), with

- channel-temporal ``Mc`` (T x C): per frame, avg- and max-pooled channel descriptors through one shared
  bottleneck MLP (r=16), summed, sigmoid (Eq. 3, CBAM's channel gate); then two 1D convolutions of kernel
  3 over the T frame-level vectors, sigmoid (Eq. 4);
- spatio-temporal ``Ms`` (T x H x W): per frame, channel mean and max maps, one 7x7 conv, sigmoid (Eq. 5,
  CBAM's spatial gate); then two 3x3x3 convolutions over the stacked T x H x W maps, sigmoid (Eq. 6).

Where the paper is silent, the choices (all in :class:`w3model.config.ModelConfig`):

- **Temporal 1D convs, per channel** (``w3_channel_temporal="per_channel"``, depthwise, groups=C): the
  paper says the network reasons "about the temporally evolving characteristics of each channel
  dimension" and "models the per-channel temporal relationships". The channel mixing already happened in
  the frame-level MLP. A full-width alternative (``"full"``: C -> C/r -> C, kernel 3) is offered; at C=2048
  a plain C -> C layer would add ~12.6 M parameters per layer and per block, against a module meant to be
  marginal.
- **Hidden channels of the 3D convs** (``w3_spatial_hidden``, default 96): the input and output are
  single-channel maps; one hidden channel would make the pair nearly a single 5x5x5 filter, while 96 gives
  the sub-network room to learn several motion patterns at a cost of about 1.7 % of TSM-R50's
  multiply-accumulates. With the default the whole W3 + AFR lands at about +2 % over TSM, inside the
  paper's +1.5 % (8 frames) .. +3.2 % (16 frames) band (measured by ``python -m w3model.flops``). The
  two 3D convolutions are computed exactly with 2D convolutions over stacked neighbouring frames
  (:class:`MapVolumeNet`), much faster than ``Conv3d`` with one input channel.
- **Normalisation** (``w3_norm="batch"``): BatchNorm after each attention conv that feeds another conv
  (CBAM does this for its spatial conv). The inputs of the temporal networks are sigmoid outputs around
  0.5 with little spread; normalising them lets the second layer see a zero-centred signal. ``"none"``
  uses biases instead.
- **Where in the block** (``w3_position="residual"``): on the residual branch after the last BN, before
  the identity is added, as CBAM and SE do. The identity path stays untouched, so gradients reach lower
  blocks even if a mask saturates. ``"output"`` applies W3 to the block output instead.
- **Initialisation** (``attention_init="identity"``): both final masks are ``2*sigmoid(z)`` and the last
  layer producing ``z`` starts scaled by 0.01, so at step 0 both masks are 1 +/- ~1 % and an ImageNet
  network computes what it computed before W3 was inserted; every parameter still gets a gradient. With
  plain sigmoids (``"paper"``) each block would halve its residual twice at step 0 (masks ~0.5), which
  crushes pretrained features through 16 blocks. The frame-level sigmoids (Eq. 3, 5) stay plain: they
  are the input of the temporal networks, not masks.
- **Ablations** (Table 5): ``temporal=False`` ("w/o TA") drops both video-level networks, and the
  frame-level gates become the masks, started as CBAM starts them (:func:`w3model.gates.start_as_masks_`);
  ``spatial=False`` ("w/o SA") drops Ms, leaving the channel-temporal mask Mc alone.

The full-size element-wise work (the four poolings and the two mask products) goes through
:mod:`w3model.masking`, whose backward passes write fewer full-size tensors than autograd's of the same ops.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from w3model.masking import MaskChannelsAndPool, MaskPositions
from w3model.gates import AttentionInit, ChannelGate, SpatialGate, shrink_, start_as_masks_, to_mask


def _temporal_convs(channels: int, hidden: int, kernel: int, norm: bool, groups: int = 1) -> nn.Sequential:
    """theta_c-vid: two same-length 1D convolutions over T with (optional) BatchNorm and ReLU between."""
    layers: list[nn.Module] = [nn.Conv1d(channels, hidden, kernel, padding=kernel // 2, groups=groups, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm1d(hidden))
    layers += [nn.ReLU(inplace=True), nn.Conv1d(hidden, channels, kernel, padding=kernel // 2, groups=groups)]
    return nn.Sequential(*layers)


class ChannelTemporalAttention(nn.Module):
    """``Mc`` (Eq. 3-4): which channels ("what") matter at which frame ("when")."""

    def __init__(self, channels: int, num_segments: int, reduction: int = 16, kernel: int = 3,
                 mode: Literal["per_channel", "full"] = "per_channel", norm: bool = True,
                 init: AttentionInit = "identity", temporal: bool = True):
        super().__init__()
        self.num_segments = num_segments
        self.init = init
        self.frame = ChannelGate(channels, reduction)
        self.temporal: nn.Sequential | None = None
        if not temporal:
            start_as_masks_(self.frame, None, init)
        elif mode == "per_channel":
            self.temporal = _temporal_convs(channels, channels, kernel, norm, groups=channels)
        else:
            self.temporal = _temporal_convs(channels, max(channels // reduction, 1), kernel, norm)
        if self.temporal is not None and init == "identity":
            shrink_(self.temporal[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N*T, C, H, W) -> mask (N*T, C)."""
        if self.temporal is None:  # w/o TA: the frame-level gate is the mask
            return to_mask(self.frame(x), self.init)
        nt, c = x.shape[:2]
        frame = torch.sigmoid(self.frame(x))  # (NT, C), Eq. 3
        frame = frame.reshape(nt // self.num_segments, self.num_segments, c).transpose(1, 2)  # (N, C, T)
        mask = to_mask(self.temporal(frame), self.init)  # Eq. 4
        return mask.transpose(1, 2).reshape(nt, c)


class MapVolumeNet(nn.Module):
    """theta_s-vid: two k x k x k convolutions (1 -> hidden -> 1 channels) over a clip's stacked maps.

    Exactly ``Conv3d(1, hidden, k) -> [BN] -> ReLU -> Conv3d(hidden, 1, k)`` with zero padding, computed
    with 2D convolutions: the first layer sees each frame's k temporal neighbours as k input channels,
    the second produces one partial map per temporal offset and sums them over the neighbours. Same
    multiply-accumulates; about 5x faster than ``Conv3d`` with a single input channel on the CPU (which
    falls back to a slow path there) and a plain 2D convolution for cuDNN. ``conv1.weight[o, d]`` is
    the 3D kernel's ``[o, 0, d]``, ``conv2.weight[d, c]`` its ``[0, c, d]``.
    """

    def __init__(self, hidden: int = 96, kernel: int = 3, norm: bool = True):
        super().__init__()
        self.kernel = kernel
        self.conv1 = nn.Conv2d(kernel, hidden, kernel, padding=kernel // 2, bias=not norm)
        self.bn = nn.BatchNorm2d(hidden) if norm else None
        self.conv2 = nn.Conv2d(hidden, kernel, kernel, padding=kernel // 2, bias=False)
        self.bias = nn.Parameter(torch.zeros(1))  # the 3D output conv's bias, added once per position
        with torch.no_grad():  # Conv3d's default initialisation: bound 1/sqrt(fan_in of the 3D kernel)
            for layer, fan_in in ((self.conv1, kernel ** 3), (self.conv2, hidden * kernel ** 3)):
                layer.weight.uniform_(-fan_in ** -0.5, fan_in ** -0.5)
            for bias, fan_in in ((self.conv1.bias, kernel ** 3), (self.bias, hidden * kernel ** 3)):
                if bias is not None:
                    bias.uniform_(-fan_in ** -0.5, fan_in ** -0.5)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """``maps`` (N, T, H, W) -> logits (N, T, H, W)."""
        n, t, h, w = maps.shape
        r = self.kernel // 2
        padded = F.pad(maps, (0, 0, 0, 0, r, r))  # zero frames before and after the clip
        neighbours = torch.stack([padded[:, d:d + t] for d in range(self.kernel)], dim=2)  # (N, T, k, H, W)
        hidden = self.conv1(neighbours.reshape(n * t, self.kernel, h, w))
        hidden = F.relu(self.bn(hidden) if self.bn is not None else hidden)
        partial = F.pad(self.conv2(hidden).reshape(n, t, self.kernel, h, w), (0, 0, 0, 0, 0, 0, r, r))
        return sum(partial[:, d:d + t, d] for d in range(self.kernel)) + self.bias.to(partial.dtype)


class SpatioTemporalAttention(nn.Module):
    """``Ms`` (Eq. 5-6): where ("where") the attended patterns are, frame by frame ("when")."""

    def __init__(self, num_segments: int, hidden: int = 96, kernel: int = 3, norm: bool = True,
                 init: AttentionInit = "identity", temporal: bool = True):
        super().__init__()
        self.num_segments = num_segments
        self.init = init
        self.frame = SpatialGate(norm=norm)
        self.temporal = MapVolumeNet(hidden, kernel, norm) if temporal else None
        if self.temporal is None:
            start_as_masks_(None, self.frame, init)
        elif init == "identity":
            shrink_(self.temporal.conv2)
            nn.init.zeros_(self.temporal.bias)

    def forward(self, mean: torch.Tensor, max_: torch.Tensor) -> torch.Tensor:
        """The (N*T, H, W) channel mean and max maps of the features -> mask (N*T, H, W)."""
        nt, h, w = mean.shape
        if self.temporal is None:  # w/o TA: the frame-level gate is the mask
            return to_mask(self.frame.from_pooled(mean, max_), self.init)[:, 0]
        frame = torch.sigmoid(self.frame.from_pooled(mean, max_))  # (NT, 1, H, W), Eq. 5
        clip = frame.reshape(nt // self.num_segments, self.num_segments, h, w)
        mask = to_mask(self.temporal(clip), self.init)  # Eq. 6
        return mask.reshape(nt, h, w)


class W3Attention(nn.Module):
    """Channel-temporal then spatio-temporal attention on frames ``(N*T, C, H, W)`` (Eq. 2)."""

    def __init__(self, channels: int, num_segments: int, reduction: int = 16, kernel: int = 3,
                 channel_temporal: Literal["per_channel", "full"] = "per_channel", spatial_hidden: int = 96,
                 norm: bool = True, init: AttentionInit = "identity", spatial: bool = True,
                 temporal: bool = True):
        super().__init__()
        self.channel = ChannelTemporalAttention(channels, num_segments, reduction, kernel, channel_temporal,
                                                norm, init, temporal)
        self.spatial = (SpatioTemporalAttention(num_segments, spatial_hidden, kernel, norm, init, temporal)
                        if spatial else None)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        channel = self.channel(x).to(x.dtype)  # masks follow the features' dtype under autocast
        if self.spatial is None:
            return x * channel[:, :, None, None], {"channel": channel}
        # Fc = Mc * x with the channel mean and max maps that Ms needs, then Ms * Fc (w3model/masking.py)
        x, mean, max_ = MaskChannelsAndPool.apply(x, channel)
        spatial = self.spatial(mean, max_).to(x.dtype)
        return MaskPositions.apply(x, spatial), {"channel": channel, "spatial": spatial}
