"""The ablation switches of the paper's Tables 5 and 7, each removing exactly its part; CBAM started as its
official code; AFR's start and the stage-1 "AFR loss"."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError
from train.objectives import Classification, classification_loss
from w3model import build_model, flops

SMALL = dict(depth=18, num_segments=4, heads={"label": 5})


def _clip(batch=2, frames=4, size=64, seed=0):
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _names(**options) -> set[str]:
    return {n for n, _ in build_model(**SMALL, **options).named_parameters()}


def _gflops(**options) -> float:
    return flops.count(options.pop("arch", "tsm_w3"), depth=18, frames=4, classes=5, size=64, **options)["gflops"]


FULL = _names(arch="tsm_w3")


@pytest.mark.parametrize("options, removed", [
    ({"afr": False}, lambda n: n.startswith("afr.")),                                       # w/o AFR
    ({"w3_spatial": False}, lambda n: ".attention.spatial." in n or n.startswith("afr.")),  # w/o SA
    ({"w3_temporal": False}, lambda n: ".temporal." in n),                                  # w/o TA
])
def test_each_switch_removes_exactly_its_part(options, removed):
    names = _names(arch="tsm_w3", **options)
    part = {n for n in FULL if removed(n)}
    assert part and names == FULL - part
    assert _gflops(**options) < _gflops()
    model = build_model(**SMALL, arch="tsm_w3", **options).train()
    out = model(_clip(), return_attention=True)
    F.cross_entropy(out["logits"]["label"], torch.tensor([1, 3])).backward()
    silent = {n for n, p in model.named_parameters() if ".attention." in n and (p.grad is None or not p.grad.any())}
    # Where the frame gate is the mask (w/o TA) its BatchNorm weight starts at 0, as in CBAM: the 7x7 conv
    # before it gets a gradient from the second step on.
    starts_silent = {n for n in names if n.endswith("spatial.frame.conv.weight")} if "w3_temporal" in options else set()
    assert silent == starts_silent
    kinds = {kind for maps in out["attention"].values() for kind in maps}
    assert kinds == ({"channel"} if options.get("w3_spatial") is False else {"channel", "spatial"})


def test_afr_flops_are_its_1x1_conv():
    """w/o AFR saves exactly the conv of Eq. 8: T frames x h x w positions x 4 stages x C_l channels."""
    saved = _gflops() - _gflops(afr=False)
    assert saved * 1e9 == pytest.approx(4 * 2 * 2 * 4 * 512)      # 64 px -> 2x2 at the last stage


def test_without_temporal_attention_the_frame_gates_are_the_masks():
    """w/o TA is W3 reduced to per-frame gates: no mask depends on another frame (no shift either here, which
    would mix frames before the first attention)."""
    model = build_model(**SMALL, arch="tsm_w3", w3_temporal=False, attention_init="paper", shift_stages=[]).eval()
    clip = _clip(batch=1)
    with torch.no_grad():
        assert torch.all(model(clip, return_attention=True)["attention"]["layer1.0"]["spatial"] == 0.5)  # CBAM's start
        model.backbone.layer1[0].attention.spatial.frame.bn.weight.fill_(1.0)    # as after some training
    changed = clip.clone()
    changed[:, 3] = torch.randn_like(changed[:, 3])
    with torch.no_grad():
        before = model(clip, return_attention=True)["attention"]["layer1.0"]
        after = model(changed, return_attention=True)["attention"]["layer1.0"]
    for kind in ("channel", "spatial"):
        assert torch.equal(before[kind][:, :3], after[kind][:, :3])       # frames 0-2 untouched
        assert not torch.equal(before[kind][:, 3], after[kind][:, 3])
    full = build_model(**SMALL, arch="tsm_w3", attention_init="paper", shift_stages=[]).eval()
    with torch.no_grad():
        mixed = full(clip, return_attention=True)["attention"]["layer1.0"]["channel"]
        mixed_after = full(changed, return_attention=True)["attention"]["layer1.0"]["channel"]
    assert not torch.equal(mixed[:, 2], mixed_after[:, 2])                  # W3's temporal convs reach frame 2


def test_switches_that_cannot_apply_are_config_errors():
    with pytest.raises(ConfigError, match=r"model\.w3_spatial: removes a part of W3; arch 'tsm_cbam'"):
        build_model(arch="tsm_cbam", w3_spatial=False)
    with pytest.raises(ConfigError, match=r"model\.afr: AFR refines features with the spatial masks"):
        build_model(arch="tsm_w3", w3_spatial=False, afr=True)
    with pytest.raises(ConfigError, match=r"model\.afr_loss_weight: the AFR loss supervises"):
        build_model(arch="tsm_w3", afr=False, afr_loss_weight=0.5)
    with pytest.raises(ConfigError, match=r"model\.afr_loss_weight: must be >= 0"):
        build_model(arch="tsm_w3", afr_loss_weight=-1.0)
    assert build_model(**SMALL, arch="tsm_w3", w3_spatial=False).afr is None     # AFR goes with Ms by default


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


def test_afr_init_small_is_the_default_init_times_0_01():
    torch.manual_seed(0)
    default = build_model(**SMALL, arch="tsm_w3", afr_init="default").afr.conv
    torch.manual_seed(0)
    small = build_model(**SMALL, arch="tsm_w3", afr_init="small").afr.conv
    torch.testing.assert_close(small.weight, 0.01 * default.weight)
    assert torch.all(small.bias == 0) and default.bias.abs().sum() > 0


def test_afr_loss_is_the_heads_cross_entropy_on_the_unrefined_features():
    torch.manual_seed(0)
    model = build_model(**SMALL, arch="tsm_w3", dropout=0.0, afr_loss_weight=0.5).train()
    clip, labels = _clip(), {"label": torch.tensor([1, 3])}
    out = model(clip)
    afr, model.afr = model.afr, None          # the same network without the refinement: its logits are x's
    try:
        unrefined = model(clip)["logits"]["label"]
    finally:
        model.afr = afr
    torch.testing.assert_close(out["unrefined_logits"]["label"], unrefined)
    expected = classification_loss(out["logits"], labels) + 0.5 * F.cross_entropy(unrefined, labels["label"])
    torch.testing.assert_close(Classification(0.5)(out, {"labels": labels})[0], expected)
    assert "unrefined_logits" not in model.eval()(clip)                    # training only
    plain = build_model(**SMALL, arch="tsm_w3").train()(clip)
    assert "unrefined_logits" not in plain
    torch.testing.assert_close(Classification(0.0)(plain, {"labels": labels})[0],
                               classification_loss(plain["logits"], labels))
