"""Temporal shift (Lin et al., TSM): exchange a fraction of channels with the neighbouring frames.

Matches the TSM reference (``ops/temporal_shift.py``, ``shift``): with ``fold = C // fold_div``, channels
``[0, fold)`` of frame t take frame t+1's values, channels ``[fold, 2*fold)`` take frame t-1's, the rest
stay; the frames that have no neighbour (the clip ends) get zeros. It costs no parameters and no
multiply-accumulates, only memory movement.
"""
from __future__ import annotations

import torch
from torch import nn


def temporal_shift(x: torch.Tensor, num_segments: int, fold_div: int = 8) -> torch.Tensor:
    """Shift ``x`` of shape ``(B*T, C, H, W)`` (frames of one clip consecutive) along T."""
    nt, c, h, w = x.shape
    if nt % num_segments:
        raise ValueError(f"temporal_shift: batch*frames {nt} is not a multiple of num_segments {num_segments}")
    x = x.reshape(nt // num_segments, num_segments, c, h, w)
    fold = c // fold_div
    out = torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]  # from the next frame
    out[:, 1:, fold:2 * fold] = x[:, :-1, fold:2 * fold]  # from the previous frame
    out[:, :, 2 * fold:] = x[:, :, 2 * fold:]
    return out.reshape(nt, c, h, w)


class TemporalShift(nn.Module):
    """Parameter-free module form, so a block's printout says where the shift sits."""

    def __init__(self, num_segments: int, fold_div: int = 8):
        super().__init__()
        self.num_segments = num_segments
        self.fold_div = fold_div

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return temporal_shift(x, self.num_segments, self.fold_div)

    def extra_repr(self) -> str:
        return f"num_segments={self.num_segments}, fold_div={self.fold_div}"
