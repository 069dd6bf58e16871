"""bf16 autocast and channels_last: forward and backward run, and agree with fp32 / NCHW."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from w3model import build_model


def _model(arch):
    torch.manual_seed(0)
    return build_model(arch=arch, depth=18, num_segments=4, heads={"verb": 5, "noun": 7},
                       dropout=0.0).train()  # no dropout: two runs must see the same computation


def _clip():
    return torch.randn(2, 4, 3, 96, 96, generator=torch.Generator().manual_seed(1))


def _loss(out):
    labels = torch.tensor([1, 3])
    return sum(F.cross_entropy(logits.float(), labels) for logits in out["logits"].values())


@pytest.mark.parametrize("arch", ["tsm", "tsm_cbam", "tsm_nl", "tsm_w3"])
def test_bf16_autocast_forward_and_backward(arch):
    model = _model(arch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_clip(), return_attention=True)
        loss = _loss(out)
    assert out["features"].dtype == torch.bfloat16
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    reference = _model(arch)
    expected = reference(_clip())["features"]
    assert (out["features"].float() - expected).norm() / expected.norm() < 0.05


@pytest.mark.parametrize("arch", ["tsm_nl", "tsm_w3"])
def test_channels_last_matches_nchw_forward_and_backward(arch):
    nchw, nhwc = _model(arch), _model(arch).to(memory_format=torch.channels_last)
    out_nchw, out_nhwc = nchw(_clip()), nhwc(_clip())
    # the layout survives every module (shift, attention, non-local, AFR) to the last stage
    assert out_nhwc["features"].flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_nhwc["features"], out_nchw["features"], rtol=1e-3, atol=1e-4)
    _loss(out_nchw).backward()
    _loss(out_nhwc).backward()
    # BatchNorm-bias gradients are sums with heavy cancellation, so summation order moves them by a few
    # per cent; the gradient as a whole must agree closely, each parameter's within 5 %.
    a = torch.cat([p.grad.flatten() for p in nchw.parameters()])
    b = torch.cat([p.grad.flatten() for p in nhwc.parameters()])
    assert (b - a).norm() / a.norm() < 1e-3
    worst = max(float((q.grad - p.grad).norm() / p.grad.norm().clamp_min(1e-12))
                for p, q in zip(nchw.parameters(), nhwc.parameters()))
    assert worst < 0.05


def test_channels_last_with_bf16_autocast():
    model = _model("tsm_w3").to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = _loss(model(_clip()))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
