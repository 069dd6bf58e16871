"""Non-local block (Wang et al., CVPR 2018), the TSM+NL baseline of the paper's Table 6.

Embedded-Gaussian form over all T x H x W positions of a clip, as the TSM reference uses it
(``ops/non_local.py``): theta/phi/g are 1x1x1 convs to C/2 channels, phi and g are max-pooled 2x2 in
space, the output conv is followed by a BatchNorm initialised to zero, so the block starts as the
identity and an ImageNet backbone is unchanged at step 0. Placed after residual blocks (TSM's
``NL3DWrapper``), by default 2 in res3 and 3 in res4, every other block.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NonLocalBlock(nn.Module):
    def __init__(self, channels: int, num_segments: int, sub_sample: bool = True):
        super().__init__()
        self.num_segments = num_segments
        inter = max(channels // 2, 1)
        self.theta = nn.Conv3d(channels, inter, 1)
        self.phi = nn.Conv3d(channels, inter, 1)
        self.g = nn.Conv3d(channels, inter, 1)
        self.pool = nn.MaxPool3d((1, 2, 2)) if sub_sample else nn.Identity()
        self.out = nn.Conv3d(inter, channels, 1)
        self.bn = nn.BatchNorm3d(channels)
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N*T, C, H, W) -> same shape."""
        nt, c, h, w = x.shape
        clip = x.reshape(nt // self.num_segments, self.num_segments, c, h, w).transpose(1, 2)  # (N, C, T, H, W)
        n = clip.shape[0]
        query = self.theta(clip).flatten(2).transpose(1, 2)  # (N, THW, C')
        key = self.pool(self.phi(clip)).flatten(2).transpose(1, 2)  # (N, T(H/2)(W/2), C')
        value = self.pool(self.g(clip)).flatten(2).transpose(1, 2)
        # softmax(theta phi^T) g without the 1/sqrt(d) of dot-product attention: the NL paper's form.
        y = F.scaled_dot_product_attention(query[:, None], key[:, None], value[:, None], scale=1.0)[:, 0]
        y = y.transpose(1, 2).reshape(n, -1, self.num_segments, h, w)
        z = self.bn(self.out(y)) + clip
        # Hand back the caller's memory layout: the add above keeps the (N, C, T, H, W) view's strides,
        # which would silently turn an NCHW network channels-last from here on.
        layout = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
        return z.transpose(1, 2).reshape(nt, c, h, w).contiguous(memory_format=layout)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
