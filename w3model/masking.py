"""W3's element-wise work on the full feature map, as three autograd functions with lean backward passes.

W3 adds ~2 % multiply-accumulates to TSM but, written with plain tensor ops, about a quarter of its step
time on the CPU: it pools every feature map four ways and multiplies it by two masks, and autograd's
backward of those ops writes several more full-size tensors per block (a zero tensor per ``max`` to
scatter into, a materialised broadcast per ``mean``, the sums of the three gradients reaching the masked
map). These functions compute the same values and gradients with one full-size write per backward
(the broadcast mean gradient, into which the max gradients are added at their argmax) and contractions
that never materialise an element-wise product. They are memory-layout agnostic (NCHW or channels_last)
and traceable by torch.compile.
"""
from __future__ import annotations

from typing import Callable

import torch


def _argmax_hw(x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Max over H and W of (N, C, H, W) and where it is: the flat H*W index for NCHW, (row, column) for other
    layouts (flattening a channels_last map would copy it; two reductions do not)."""
    if x.is_contiguous():
        value, flat = x.flatten(2).max(dim=2)          # (N, C)
        return value, (flat,)
    row_max, col = x.max(dim=3)                        # (N, C, H)
    value, row = row_max.max(dim=2)                    # (N, C)
    return value, (row, col.gather(2, row[..., None])[..., 0])


def _add_at_hw(grad: torch.Tensor, where: tuple[torch.Tensor, ...], value: torch.Tensor) -> None:
    """grad[n, c, where the max was] += value[n, c]."""
    n, c, h, w = grad.shape
    if len(where) == 1:
        grad.view(n, c, h * w).scatter_add_(2, where[0][..., None], value[..., None])
        return
    grid = torch.meshgrid(torch.arange(n, device=grad.device), torch.arange(c, device=grad.device), indexing="ij")
    grad.index_put_((*grid, *where), value, accumulate=True)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.contiguous_format if x.is_contiguous() or not x.is_contiguous(
        memory_format=torch.channels_last) else torch.channels_last


class PoolHW(torch.autograd.Function):
    """(N, C, H, W) -> per-channel mean and max over H, W (CBAM's channel descriptors, paper Eq. 3).

    Saves only where the maxima are, not the map."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value, where = _argmax_hw(x)
        ctx.save_for_backward(*where)
        ctx.meta = (x.shape, x.dtype, _memory_format(x))
        return x.mean(dim=(2, 3)), value

    @staticmethod
    def backward(ctx, d_mean: torch.Tensor | None, d_max: torch.Tensor | None) -> torch.Tensor:
        where = ctx.saved_tensors
        (n, c, h, w), dtype, fmt = ctx.meta
        grad = torch.empty((n, c, h, w), dtype=dtype, device=where[0].device, memory_format=fmt)
        if d_mean is None:
            grad.zero_()
        else:   # the mean's gradient, broadcast once; the max's is added at its argmax
            grad.copy_((d_mean / (h * w))[:, :, None, None].expand(n, c, h, w))
        if d_max is not None:
            _add_at_hw(grad, where, d_max.to(dtype))
        return grad


class MaskChannelsAndPool(torch.autograd.Function):
    """``Fc = x * Mc`` (Eq. 2) with Fc's per-position channel mean and max (Eq. 5's descriptors)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor):
        masked = x * mask[:, :, None, None]
        value, channel = masked.max(dim=1)
        ctx.save_for_backward(x, mask, channel)
        return masked, masked.mean(dim=1), value

    @staticmethod
    def backward(ctx, d_masked: torch.Tensor | None, d_mean: torch.Tensor | None, d_max: torch.Tensor | None):
        x, mask, channel = ctx.saved_tensors
        # the gradient reaching Fc: from y = Fc * Ms, from the mean over C, from the max over C
        grad = torch.zeros_like(x) if d_masked is None else d_masked
        grad = grad + (d_mean / x.shape[1])[:, None].to(grad.dtype) if d_mean is not None else grad.clone()
        if d_max is not None:
            grad.scatter_add_(1, channel[:, None], d_max[:, None].to(grad.dtype))
        d_mask = (grad * x).sum(dim=(2, 3)) if ctx.needs_input_grad[1] else None
        return grad * mask[:, :, None, None], d_mask


class MaskPositions(torch.autograd.Function):
    """``y = Fc * Ms`` (Eq. 2): the spatial mask (N, H, W) over every channel."""

    @staticmethod
    def forward(ctx, masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(masked, mask)
        return masked * mask[:, None]

    @staticmethod
    def backward(ctx, d_out: torch.Tensor):
        masked, mask = ctx.saved_tensors
        d_mask = (d_out * masked).sum(dim=1) if ctx.needs_input_grad[1] else None
        return d_out * mask[:, None], d_mask


MaskOf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fused_masking(x: torch.Tensor, channel_of: MaskOf, spatial_of: MaskOf) -> torch.Tensor:
    """W3's element-wise work through the three functions above, as :class:`w3model.w3.W3Attention` does it:
    ``channel_of(mean, max)`` over H, W gives Mc (N, C), ``spatial_of(mean, max)`` over C of Fc gives Ms."""
    masked, mean, max_ = MaskChannelsAndPool.apply(x, channel_of(*PoolHW.apply(x)))
    return MaskPositions.apply(masked, spatial_of(mean, max_))


def plain_masking(x: torch.Tensor, channel_of: MaskOf, spatial_of: MaskOf) -> torch.Tensor:
    """The same with plain tensor ops and autograd's backward: the reference the functions are tested and
    timed against (tests/test_model_w3.py, benchmarks/w3_masking.py)."""
    masked = x * channel_of(x.mean(dim=(2, 3)), x.flatten(2).max(dim=2).values)[:, :, None, None]
    return masked * spatial_of(masked.mean(dim=1), masked.max(dim=1).values)[:, None]
