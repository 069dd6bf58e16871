"""The ablation switches of the paper's Tables 5 and 7, each removing exactly its part; CBAM started as its
official code; AFR's start and the stage-1 "AFR loss"."""
from __future__ import annotations

import pytest
import torch

from w3model import build_model

SMALL = dict(depth=18, num_segments=4, heads={"label": 5})


def _clip(batch=2, frames=4, size=64, seed=0):
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("init, spatial_mask", [("paper", 0.5), ("identity", 1.0)])
def test_cbam_starts_as_the_official_code(init, spatial_mask):
    """Jongchan/attention-module: biases 0, the 7x7 conv Kaiming-normal (fan_out = 49), BatchNorm momentum
    0.01 with weight 0 in the spatial gate, so the spatial mask starts at sigmoid(0)."""
    torch.manual_seed(0)
    model = build_model(arch="tsm_cbam", attention_init=init, **SMALL).eval()
    cbams = [b.attention for stage in model.backbone.stages() for b in stage]
    assert all(c.spatial.bn.momentum == 0.01 and torch.all(c.spatial.bn.weight == 0) for c in cbams)
    biases = [p for n, p in model.named_parameters() if ".attention." in n and n.endswith(".bias")]
    assert biases and all(torch.all(b == 0) for b in biases)
    conv = torch.cat([c.spatial.conv.weight.flatten() for c in cbams])
    assert conv.std().item() == pytest.approx((2 / 49) ** 0.5, rel=0.15)
    with torch.no_grad():
        out = model(_clip(batch=1), return_attention=True)
    assert all(torch.all(m["spatial"] == spatial_mask) for m in out["attention"].values())
    assert tuple(out["features"].shape) == (1, 4, 512, 2, 2)       # what an MFR teacher hands on (Table 7)
