"""W3, AFR and the baselines' modules: gradients, masks, start-up behaviour, outputs, optimiser groups."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import ConfigError
from w3model import ModelConfig, build_model
from w3model.afr import AttentionFeatureRefinement
from w3model.model import OPTIM_POLICY
from w3model.w3 import MapVolumeNet

ARCHS = ("tsn", "tsm", "tsm_cbam", "tsm_nl", "tsm_w3")


def _clip(batch=2, frames=4, size=112, seed=0):
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _new_params(model):
    return {n: p for n, p in model.named_parameters() if ".attention." in n or n.startswith("afr.")}


@pytest.mark.parametrize("depth, options", [
    (50, {}),  # the paper's default
    (18, {"w3_channel_temporal": "full", "w3_norm": "none", "attention_init": "paper", "afr_source": "last",
          "w3_position": "output"}),
])
def test_every_w3_and_afr_parameter_gets_a_gradient(depth, options):
    torch.manual_seed(0)
    model = build_model(arch="tsm_w3", depth=depth, num_segments=4, heads={"label": 7}, **options).train()
    params = _new_params(model)
    assert any(n.startswith("afr.") for n in params) and any(".spatial.temporal." in n for n in params)
    out = model(_clip())
    F.cross_entropy(out["logits"]["label"], torch.tensor([1, 5])).backward()
    without = [n for n, p in params.items() if p.grad is None or not torch.any(p.grad != 0)]
    assert not without, f"no gradient reached: {without}"


def test_identity_init_leaves_a_tsm_network_unchanged_at_step_0():
    """The trunk's features x are unchanged; y = x + AFR's map stays within 1 % only with afr_init small."""
    torch.manual_seed(0)
    tsm = build_model(arch="tsm", depth=50, num_segments=4).eval()
    w3 = build_model(arch="tsm_w3", depth=50, num_segments=4, afr_init="small").eval()
    assert not w3.load_state_dict(tsm.state_dict(), strict=False).unexpected_keys  # same trunk and head
    clip = _clip()
    with torch.no_grad():
        plain, attended = tsm(clip), w3(clip, return_attention=True)
    for maps in attended["attention"].values():
        for mask in maps.values():
            assert 0.98 < mask.min() and mask.max() < 1.02
    change = (attended["features"] - plain["features"]).norm() / plain["features"].norm()
    assert change < 0.01


def test_paper_init_gives_sigmoid_masks():
    model = build_model(arch="tsm_w3", depth=18, num_segments=4, attention_init="paper").eval()
    with torch.no_grad():
        maps = model(_clip(), return_attention=True)["attention"]
    masks = [m for block in maps.values() for m in block.values()]
    assert all(0 < m.min() and m.max() < 1 for m in masks)
    assert max(float((m - 1).abs().mean()) for m in masks) > 0.2  # far from the identity


def test_attention_maps_and_features_have_the_contract_shapes():
    model = build_model(arch="tsm_w3", depth=18, num_segments=4, heads={"verb": 97, "noun": 300}).eval()
    with torch.no_grad():
        out = model(_clip(batch=3), return_attention=True)
    assert {k: tuple(v.shape) for k, v in out["logits"].items()} == {"verb": (3, 97), "noun": (3, 300)}
    assert tuple(out["features"].shape) == (3, 4, 512, 4, 4)
    assert list(out["attention"]) == [f"layer{s}.{i}" for s in range(1, 5) for i in range(2)]
    assert tuple(out["attention"]["layer1.0"]["channel"].shape) == (3, 4, 64)
    assert tuple(out["attention"]["layer2.1"]["spatial"].shape) == (3, 4, 14, 14)
    assert "attention" not in model(_clip(batch=1))
    tsm = build_model(arch="tsm", depth=18, num_segments=4)
    assert tsm(_clip(batch=1), return_attention=True)["attention"] == {}


def test_video_logits_are_the_mean_of_frame_logits():
    model = build_model(arch="tsm_w3", depth=18, num_segments=4, heads={"label": 6}).eval()
    with torch.no_grad():
        out = model(_clip(batch=2))
        y = out["features"]
        per_frame = model.heads["label"](y.mean(dim=(3, 4)))  # (B, T, classes)
    torch.testing.assert_close(out["logits"]["label"], per_frame.mean(dim=1))


def test_afr_adds_relu_of_a_1x1_conv_over_pooled_stage_maps():
    """Eq. 7-8 with hand-set weights: y = x + ReLU(w . [AAP(M^1), AAP(M^2)] + b)."""
    afr = AttentionFeatureRefinement(num_stages=2, out_channels=3, source="mean")
    with torch.no_grad():
        afr.conv.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])[:, :, None, None])
        afr.conv.bias.zero_()
    x = torch.zeros(1, 3, 2, 2)
    stage1 = [torch.full((1, 4, 4), 0.2), torch.full((1, 4, 4), 0.4)]  # mean 0.3, pooled 4x4 -> 2x2
    stage2 = [torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])]
    y = afr(x, [stage1, stage2])
    torch.testing.assert_close(y[0, 0], torch.full((2, 2), 0.3))
    torch.testing.assert_close(y[0, 1], torch.tensor([[0.0, 2.0], [2.0, 0.0]]))
    torch.testing.assert_close(y[0, 2], torch.zeros(2, 2))  # negative -> ReLU -> nothing added
    afr.source = "last"
    torch.testing.assert_close(afr(x, [stage1, stage2])[0, 0], torch.full((2, 2), 0.4))


@pytest.mark.parametrize("arch, blocks", [
    ("tsm_cbam", [f"layer{s}.{i}" for s, n in zip(range(1, 5), (3, 4, 6, 3)) for i in range(n)]),
    ("tsm_w3", [f"layer{s}.{i}" for s, n in zip(range(1, 5), (3, 4, 6, 3)) for i in range(n)]),
    ("tsm_nl", ["layer2.0", "layer2.2", "layer3.0", "layer3.2", "layer3.4"]),
])
def test_where_the_new_modules_sit_in_resnet50(arch, blocks):
    model = build_model(arch=arch, depth=50, num_segments=2)
    slot = "non_local" if arch == "tsm_nl" else "attention"
    found = [f"layer{s}.{i}" for s, stage in enumerate(model.backbone.stages(), start=1)
             for i, block in enumerate(stage) if getattr(block, slot) is not None]
    assert found == blocks
    assert (model.afr is not None) == (arch == "tsm_w3")


def test_non_local_blocks_start_as_the_identity():
    torch.manual_seed(0)
    tsm = build_model(arch="tsm", depth=50, num_segments=4).eval()
    nl = build_model(arch="tsm_nl", depth=50, num_segments=4).eval()
    nl.load_state_dict(tsm.state_dict(), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(nl(_clip())["features"], tsm(_clip())["features"])


@pytest.mark.parametrize("arch", ARCHS)
def test_param_groups_follow_the_tsm_policy_and_cover_every_parameter_once(arch):
    model = build_model(arch=arch, depth=18, num_segments=2, heads={"verb": 5, "noun": 7})
    groups = model.param_groups(lr=0.01, weight_decay=1e-4)
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len(list(model.parameters()))
    by_name = {g["name"]: g for g in groups}
    policy = {name: (lr, decay) for name, lr, decay in OPTIM_POLICY}
    for g in groups:
        assert g["lr"] == pytest.approx(0.01 * policy[g["name"]][0])
        assert g["weight_decay"] == pytest.approx(1e-4 * policy[g["name"]][1])
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(by_name["lr5_weight"]["params"]) == ids(h.weight for h in model.heads.values())
    assert ids(by_name["lr10_bias"]["params"]) == ids(h.bias for h in model.heads.values())
    assert by_name["lr5_weight"]["lr"] == pytest.approx(0.05) and by_name["lr10_bias"]["lr"] == pytest.approx(0.1)
    bn = ids(p for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for p in m.parameters())
    no_decay = ids(p for g in groups if g["weight_decay"] == 0 for p in g["params"])
    biases = ids(p for n, p in model.named_parameters() if n.endswith(".bias"))
    assert bn | biases == no_decay
    new = ids(p for n, p in model.named_parameters()
              if ".attention." in n or ".non_local." in n or n.startswith("afr."))
    assert new == ids(p for g in groups if g["name"].startswith("new_") for p in g["params"])
    assert bool(new) == (arch in ("tsm_cbam", "tsm_nl", "tsm_w3"))
    torch.optim.SGD(groups, lr=0.01, momentum=0.9)  # the groups are what an optimiser takes


def test_config_errors_name_the_key_path():
    with pytest.raises(ConfigError, match=r"model\.w3_reductoin: unknown model setting"):
        build_model(arch="tsm_w3", w3_reductoin=8)
    with pytest.raises(ConfigError, match=r"model\.depth: expected int, got 'fifty'"):
        build_model(depth="fifty")
    with pytest.raises(ConfigError, match=r"model\.num_segments: expected int, got True"):
        build_model(num_segments=True)
    with pytest.raises(ConfigError, match=r"model\.heads\.noun: expected int"):
        build_model(heads={"verb": 97, "noun": "300"})
    with pytest.raises(ConfigError, match=r"model\.arch: expected one of"):
        build_model(arch="tsm_w4")
    with pytest.raises(ConfigError, match=r"model\.depth: 152 is not one of"):
        build_model(depth=152)
    with pytest.raises(ConfigError, match=r"model\.afr: AFR refines features with spatial attention maps"):
        build_model(arch="tsm", afr=True)
    with pytest.raises(ConfigError, match=r"model\.shift_stages\[1\]: expected int"):
        build_model(shift_stages=[1, "2"])
    with pytest.raises(ConfigError, match=r"exp\.model\.dropout: must be in \[0, 1\)"):
        ModelConfig.from_dict({"dropout": 1.5}, labels={"dropout": "exp.model.dropout"})


def test_config_from_yaml_shaped_dict_round_trips():
    values = {"arch": "tsm_cbam", "depth": 18, "num_segments": 16, "heads": {"verb": 97, "noun": 300},
              "dropout": 0.8, "pretrained": None, "afr": True, "w3_spatial_hidden": 32}
    config = ModelConfig.from_dict(values)
    assert config.use_afr and ModelConfig.from_dict(config.to_dict()) == config
    model = build_model(**values)
    assert model.afr is not None and model.config == config
    # the settings not given take ModelConfig's defaults: build_model keeps no defaults of its own
    assert build_model(depth=18).config == ModelConfig(depth=18)


def test_wrong_frame_count_is_a_config_error():
    model = build_model(arch="tsm", depth=18, num_segments=8)
    with pytest.raises(ConfigError, match="model.num_segments"):
        model(_clip(frames=4))


@pytest.mark.parametrize("norm", [False, True])
def test_map_volume_net_is_exactly_two_3d_convolutions(norm):
    """MapVolumeNet computes Conv3d(1, h, 3) -> [BN] -> ReLU -> Conv3d(h, 1, 3) with 2D convolutions."""
    torch.manual_seed(0)
    net = MapVolumeNet(hidden=5, kernel=3, norm=norm).eval()
    conv1 = torch.nn.Conv3d(1, 5, 3, padding=1, bias=not norm)
    conv2 = torch.nn.Conv3d(5, 1, 3, padding=1)
    with torch.no_grad():
        for p in (*net.parameters(), *net.buffers()):
            if p.is_floating_point():
                p.uniform_(0.5, 1.5) if p is getattr(net.bn, "running_var", None) else p.normal_()
        conv1.weight.copy_(net.conv1.weight[:, None])  # [o, d, y, x] -> [o, 0, d, y, x]
        if not norm:
            conv1.bias.copy_(net.conv1.bias)
        conv2.weight.copy_(net.conv2.weight.transpose(0, 1)[None])  # [d, c, y, x] -> [0, c, d, y, x]
        conv2.bias.copy_(net.bias)
        maps = torch.rand(2, 5, 6, 7)  # (N, T, H, W)
        hidden = conv1(maps[:, None])
        if norm:
            hidden = F.batch_norm(hidden, net.bn.running_mean, net.bn.running_var, net.bn.weight, net.bn.bias)
        expected = conv2(F.relu(hidden))[:, 0]
        torch.testing.assert_close(net(maps), expected, rtol=1e-4, atol=1e-4)


def test_fc_lr5_false_gives_the_classifier_the_trunks_rules():
    """TSM's fc_lr5 switch: off, the heads join normal_weight / normal_bias (1x / 2x lr, decay on weights)."""
    model = build_model(arch="tsm_w3", depth=18, num_segments=2, heads={"label": 5}, fc_lr5=False)
    groups = {g["name"]: {id(p) for p in g["params"]} for g in model.param_groups(lr=0.01, weight_decay=1e-4)}
    assert "lr5_weight" not in groups and "lr10_bias" not in groups
    assert id(model.heads["label"].weight) in groups["normal_weight"]
    assert id(model.heads["label"].bias) in groups["normal_bias"]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fused_masking_matches_plain_ops_in_values_and_gradients(layout):
    """The lean backward passes of w3model/masking.py give autograd's gradients of the plain formulation,
    in NCHW and channels_last, for the features and for both masks' parameters."""
    from w3model.masking import MaskChannelsAndPool, MaskPositions, PoolHW, fused_masking, plain_masking
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, 5, 7, dtype=torch.double, generator=g).to(memory_format=layout)
    for fn, inputs in ((PoolHW.apply, (x,)),
                       (MaskChannelsAndPool.apply, (x, torch.rand(4, 6, dtype=torch.double, generator=g))),
                       (MaskPositions.apply, (x, torch.rand(4, 5, 7, dtype=torch.double, generator=g)))):
        assert torch.autograd.gradcheck(fn, tuple(t.clone().requires_grad_() for t in inputs))
    w_c = torch.randn(6, dtype=torch.double, generator=g, requires_grad=True)
    w_s = torch.randn(5, 7, dtype=torch.double, generator=g, requires_grad=True)
    channel = lambda mean, max_: torch.sigmoid((mean - max_) * w_c)  # noqa: E731
    spatial = lambda mean, max_: torch.sigmoid(mean * w_s + max_)  # noqa: E731
    grad_out = torch.randn(x.shape, dtype=torch.double, generator=g)
    results = []
    for fn in (plain_masking, fused_masking):
        leaf = x.clone().requires_grad_()
        out = fn(leaf, channel, spatial)
        out.backward(grad_out)
        results.append((out.detach(), leaf.grad, w_c.grad.clone(), w_s.grad.clone()))
        w_c.grad = w_s.grad = None
    for plain, fused in zip(*results):
        torch.testing.assert_close(fused, plain)
    assert results[1][1].is_contiguous(memory_format=layout)


def test_fused_max_gradient_goes_to_one_element_on_ties():
    """On a constant map every position ties for the max: its whole gradient reaches one element, as with
    torch.max, not one copy per tied element."""
    from w3model.masking import PoolHW
    x = torch.ones(2, 3, 4, 4, requires_grad=True)
    PoolHW.apply(x)[1].sum().backward()
    assert x.grad.sum().item() == pytest.approx(6.0)
    assert (x.grad != 0).sum().item() == 6
