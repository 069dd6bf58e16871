"""ResNet trunk: torchvision's names and shapes, and the loader for torchvision ImageNet state_dict files."""
from __future__ import annotations

import pytest
import torch

from pipeline.errors import DataError, ResourceError
from w3model import build_model
from w3model.pretrained import load_torchvision_resnet, torchvision_keys
from w3model.resnet import ResNet

# torchvision.models.resnet50().state_dict(): every key with its shape, in order. Transcribed from
# torchvision/models/resnet.py (Bottleneck blocks [3, 4, 6, 3], stride on the 3x3 conv, downsample =
# Sequential(conv1x1, BatchNorm2d)), independently of w3model.
TORCHVISION_RESNET50 = """
conv1.weight 64x3x7x7
bn1.weight 64
bn1.bias 64
bn1.running_mean 64
bn1.running_var 64
bn1.num_batches_tracked scalar
layer1.0.conv1.weight 64x64x1x1
layer1.0.bn1.weight 64
layer1.0.bn1.bias 64
layer1.0.bn1.running_mean 64
layer1.0.bn1.running_var 64
layer1.0.bn1.num_batches_tracked scalar
layer1.0.conv2.weight 64x64x3x3
layer1.0.bn2.weight 64
layer1.0.bn2.bias 64
layer1.0.bn2.running_mean 64
layer1.0.bn2.running_var 64
layer1.0.bn2.num_batches_tracked scalar
layer1.0.conv3.weight 256x64x1x1
layer1.0.bn3.weight 256
layer1.0.bn3.bias 256
layer1.0.bn3.running_mean 256
layer1.0.bn3.running_var 256
layer1.0.bn3.num_batches_tracked scalar
layer1.0.downsample.0.weight 256x64x1x1
layer1.0.downsample.1.weight 256
layer1.0.downsample.1.bias 256
layer1.0.downsample.1.running_mean 256
layer1.0.downsample.1.running_var 256
layer1.0.downsample.1.num_batches_tracked scalar
layer1.1.conv1.weight 64x256x1x1
layer1.1.bn1.weight 64
layer1.1.bn1.bias 64
layer1.1.bn1.running_mean 64
layer1.1.bn1.running_var 64
layer1.1.bn1.num_batches_tracked scalar
layer1.1.conv2.weight 64x64x3x3
layer1.1.bn2.weight 64
layer1.1.bn2.bias 64
layer1.1.bn2.running_mean 64
layer1.1.bn2.running_var 64
layer1.1.bn2.num_batches_tracked scalar
layer1.1.conv3.weight 256x64x1x1
layer1.1.bn3.weight 256
layer1.1.bn3.bias 256
layer1.1.bn3.running_mean 256
layer1.1.bn3.running_var 256
layer1.1.bn3.num_batches_tracked scalar
layer1.2.conv1.weight 64x256x1x1
layer1.2.bn1.weight 64
layer1.2.bn1.bias 64
layer1.2.bn1.running_mean 64
layer1.2.bn1.running_var 64
layer1.2.bn1.num_batches_tracked scalar
layer1.2.conv2.weight 64x64x3x3
layer1.2.bn2.weight 64
layer1.2.bn2.bias 64
layer1.2.bn2.running_mean 64
layer1.2.bn2.running_var 64
layer1.2.bn2.num_batches_tracked scalar
layer1.2.conv3.weight 256x64x1x1
layer1.2.bn3.weight 256
layer1.2.bn3.bias 256
layer1.2.bn3.running_mean 256
layer1.2.bn3.running_var 256
layer1.2.bn3.num_batches_tracked scalar
layer2.0.conv1.weight 128x256x1x1
layer2.0.bn1.weight 128
layer2.0.bn1.bias 128
layer2.0.bn1.running_mean 128
layer2.0.bn1.running_var 128
layer2.0.bn1.num_batches_tracked scalar
layer2.0.conv2.weight 128x128x3x3
layer2.0.bn2.weight 128
layer2.0.bn2.bias 128
layer2.0.bn2.running_mean 128
layer2.0.bn2.running_var 128
layer2.0.bn2.num_batches_tracked scalar
layer2.0.conv3.weight 512x128x1x1
layer2.0.bn3.weight 512
layer2.0.bn3.bias 512
layer2.0.bn3.running_mean 512
layer2.0.bn3.running_var 512
layer2.0.bn3.num_batches_tracked scalar
layer2.0.downsample.0.weight 512x256x1x1
layer2.0.downsample.1.weight 512
layer2.0.downsample.1.bias 512
layer2.0.downsample.1.running_mean 512
layer2.0.downsample.1.running_var 512
layer2.0.downsample.1.num_batches_tracked scalar
layer2.1.conv1.weight 128x512x1x1
layer2.1.bn1.weight 128
layer2.1.bn1.bias 128
layer2.1.bn1.running_mean 128
layer2.1.bn1.running_var 128
layer2.1.bn1.num_batches_tracked scalar
layer2.1.conv2.weight 128x128x3x3
layer2.1.bn2.weight 128
layer2.1.bn2.bias 128
layer2.1.bn2.running_mean 128
layer2.1.bn2.running_var 128
layer2.1.bn2.num_batches_tracked scalar
layer2.1.conv3.weight 512x128x1x1
layer2.1.bn3.weight 512
layer2.1.bn3.bias 512
layer2.1.bn3.running_mean 512
layer2.1.bn3.running_var 512
layer2.1.bn3.num_batches_tracked scalar
layer2.2.conv1.weight 128x512x1x1
layer2.2.bn1.weight 128
layer2.2.bn1.bias 128
layer2.2.bn1.running_mean 128
layer2.2.bn1.running_var 128
layer2.2.bn1.num_batches_tracked scalar
layer2.2.conv2.weight 128x128x3x3
layer2.2.bn2.weight 128
layer2.2.bn2.bias 128
layer2.2.bn2.running_mean 128
layer2.2.bn2.running_var 128
layer2.2.bn2.num_batches_tracked scalar
layer2.2.conv3.weight 512x128x1x1
layer2.2.bn3.weight 512
layer2.2.bn3.bias 512
layer2.2.bn3.running_mean 512
layer2.2.bn3.running_var 512
layer2.2.bn3.num_batches_tracked scalar
layer2.3.conv1.weight 128x512x1x1
layer2.3.bn1.weight 128
layer2.3.bn1.bias 128
layer2.3.bn1.running_mean 128
layer2.3.bn1.running_var 128
layer2.3.bn1.num_batches_tracked scalar
layer2.3.conv2.weight 128x128x3x3
layer2.3.bn2.weight 128
layer2.3.bn2.bias 128
layer2.3.bn2.running_mean 128
layer2.3.bn2.running_var 128
layer2.3.bn2.num_batches_tracked scalar
layer2.3.conv3.weight 512x128x1x1
layer2.3.bn3.weight 512
layer2.3.bn3.bias 512
layer2.3.bn3.running_mean 512
layer2.3.bn3.running_var 512
layer2.3.bn3.num_batches_tracked scalar
layer3.0.conv1.weight 256x512x1x1
layer3.0.bn1.weight 256
layer3.0.bn1.bias 256
layer3.0.bn1.running_mean 256
layer3.0.bn1.running_var 256
layer3.0.bn1.num_batches_tracked scalar
layer3.0.conv2.weight 256x256x3x3
layer3.0.bn2.weight 256
layer3.0.bn2.bias 256
layer3.0.bn2.running_mean 256
layer3.0.bn2.running_var 256
layer3.0.bn2.num_batches_tracked scalar
layer3.0.conv3.weight 1024x256x1x1
layer3.0.bn3.weight 1024
layer3.0.bn3.bias 1024
layer3.0.bn3.running_mean 1024
layer3.0.bn3.running_var 1024
layer3.0.bn3.num_batches_tracked scalar
layer3.0.downsample.0.weight 1024x512x1x1
layer3.0.downsample.1.weight 1024
layer3.0.downsample.1.bias 1024
layer3.0.downsample.1.running_mean 1024
layer3.0.downsample.1.running_var 1024
layer3.0.downsample.1.num_batches_tracked scalar
layer3.1.conv1.weight 256x1024x1x1
layer3.1.bn1.weight 256
layer3.1.bn1.bias 256
layer3.1.bn1.running_mean 256
layer3.1.bn1.running_var 256
layer3.1.bn1.num_batches_tracked scalar
layer3.1.conv2.weight 256x256x3x3
layer3.1.bn2.weight 256
layer3.1.bn2.bias 256
layer3.1.bn2.running_mean 256
layer3.1.bn2.running_var 256
layer3.1.bn2.num_batches_tracked scalar
layer3.1.conv3.weight 1024x256x1x1
layer3.1.bn3.weight 1024
layer3.1.bn3.bias 1024
layer3.1.bn3.running_mean 1024
layer3.1.bn3.running_var 1024
layer3.1.bn3.num_batches_tracked scalar
layer3.2.conv1.weight 256x1024x1x1
layer3.2.bn1.weight 256
layer3.2.bn1.bias 256
layer3.2.bn1.running_mean 256
layer3.2.bn1.running_var 256
layer3.2.bn1.num_batches_tracked scalar
layer3.2.conv2.weight 256x256x3x3
layer3.2.bn2.weight 256
layer3.2.bn2.bias 256
layer3.2.bn2.running_mean 256
layer3.2.bn2.running_var 256
layer3.2.bn2.num_batches_tracked scalar
layer3.2.conv3.weight 1024x256x1x1
layer3.2.bn3.weight 1024
layer3.2.bn3.bias 1024
layer3.2.bn3.running_mean 1024
layer3.2.bn3.running_var 1024
layer3.2.bn3.num_batches_tracked scalar
layer3.3.conv1.weight 256x1024x1x1
layer3.3.bn1.weight 256
layer3.3.bn1.bias 256
layer3.3.bn1.running_mean 256
layer3.3.bn1.running_var 256
layer3.3.bn1.num_batches_tracked scalar
layer3.3.conv2.weight 256x256x3x3
layer3.3.bn2.weight 256
layer3.3.bn2.bias 256
layer3.3.bn2.running_mean 256
layer3.3.bn2.running_var 256
layer3.3.bn2.num_batches_tracked scalar
layer3.3.conv3.weight 1024x256x1x1
layer3.3.bn3.weight 1024
layer3.3.bn3.bias 1024
layer3.3.bn3.running_mean 1024
layer3.3.bn3.running_var 1024
layer3.3.bn3.num_batches_tracked scalar
layer3.4.conv1.weight 256x1024x1x1
layer3.4.bn1.weight 256
layer3.4.bn1.bias 256
layer3.4.bn1.running_mean 256
layer3.4.bn1.running_var 256
layer3.4.bn1.num_batches_tracked scalar
layer3.4.conv2.weight 256x256x3x3
layer3.4.bn2.weight 256
layer3.4.bn2.bias 256
layer3.4.bn2.running_mean 256
layer3.4.bn2.running_var 256
layer3.4.bn2.num_batches_tracked scalar
layer3.4.conv3.weight 1024x256x1x1
layer3.4.bn3.weight 1024
layer3.4.bn3.bias 1024
layer3.4.bn3.running_mean 1024
layer3.4.bn3.running_var 1024
layer3.4.bn3.num_batches_tracked scalar
layer3.5.conv1.weight 256x1024x1x1
layer3.5.bn1.weight 256
layer3.5.bn1.bias 256
layer3.5.bn1.running_mean 256
layer3.5.bn1.running_var 256
layer3.5.bn1.num_batches_tracked scalar
layer3.5.conv2.weight 256x256x3x3
layer3.5.bn2.weight 256
layer3.5.bn2.bias 256
layer3.5.bn2.running_mean 256
layer3.5.bn2.running_var 256
layer3.5.bn2.num_batches_tracked scalar
layer3.5.conv3.weight 1024x256x1x1
layer3.5.bn3.weight 1024
layer3.5.bn3.bias 1024
layer3.5.bn3.running_mean 1024
layer3.5.bn3.running_var 1024
layer3.5.bn3.num_batches_tracked scalar
layer4.0.conv1.weight 512x1024x1x1
layer4.0.bn1.weight 512
layer4.0.bn1.bias 512
layer4.0.bn1.running_mean 512
layer4.0.bn1.running_var 512
layer4.0.bn1.num_batches_tracked scalar
layer4.0.conv2.weight 512x512x3x3
layer4.0.bn2.weight 512
layer4.0.bn2.bias 512
layer4.0.bn2.running_mean 512
layer4.0.bn2.running_var 512
layer4.0.bn2.num_batches_tracked scalar
layer4.0.conv3.weight 2048x512x1x1
layer4.0.bn3.weight 2048
layer4.0.bn3.bias 2048
layer4.0.bn3.running_mean 2048
layer4.0.bn3.running_var 2048
layer4.0.bn3.num_batches_tracked scalar
layer4.0.downsample.0.weight 2048x1024x1x1
layer4.0.downsample.1.weight 2048
layer4.0.downsample.1.bias 2048
layer4.0.downsample.1.running_mean 2048
layer4.0.downsample.1.running_var 2048
layer4.0.downsample.1.num_batches_tracked scalar
layer4.1.conv1.weight 512x2048x1x1
layer4.1.bn1.weight 512
layer4.1.bn1.bias 512
layer4.1.bn1.running_mean 512
layer4.1.bn1.running_var 512
layer4.1.bn1.num_batches_tracked scalar
layer4.1.conv2.weight 512x512x3x3
layer4.1.bn2.weight 512
layer4.1.bn2.bias 512
layer4.1.bn2.running_mean 512
layer4.1.bn2.running_var 512
layer4.1.bn2.num_batches_tracked scalar
layer4.1.conv3.weight 2048x512x1x1
layer4.1.bn3.weight 2048
layer4.1.bn3.bias 2048
layer4.1.bn3.running_mean 2048
layer4.1.bn3.running_var 2048
layer4.1.bn3.num_batches_tracked scalar
layer4.2.conv1.weight 512x2048x1x1
layer4.2.bn1.weight 512
layer4.2.bn1.bias 512
layer4.2.bn1.running_mean 512
layer4.2.bn1.running_var 512
layer4.2.bn1.num_batches_tracked scalar
layer4.2.conv2.weight 512x512x3x3
layer4.2.bn2.weight 512
layer4.2.bn2.bias 512
layer4.2.bn2.running_mean 512
layer4.2.bn2.running_var 512
layer4.2.bn2.num_batches_tracked scalar
layer4.2.conv3.weight 2048x512x1x1
layer4.2.bn3.weight 2048
layer4.2.bn3.bias 2048
layer4.2.bn3.running_mean 2048
layer4.2.bn3.running_var 2048
layer4.2.bn3.num_batches_tracked scalar
fc.weight 1000x2048
fc.bias 1000
"""


def _torchvision_resnet50() -> list[tuple[str, tuple[int, ...]]]:
    rows = [line.split() for line in TORCHVISION_RESNET50.strip().splitlines()]
    return [(name, () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))) for name, shape in rows]


def test_resnet50_keys_and_shapes_are_torchvisions_without_fc():
    expected = _torchvision_resnet50()
    assert len(expected) == 320 and expected[-2:] == [("fc.weight", (1000, 2048)), ("fc.bias", (1000,))]
    trunk = [(name, tuple(t.shape)) for name, t in ResNet(50).state_dict().items()]
    assert trunk == expected[:-2]


@pytest.mark.parametrize("depth, torchvision_params, fc_params", [
    (18, 11_689_512, 513_000), (34, 21_797_672, 513_000), (50, 25_557_032, 2_049_000), (101, 44_549_160, 2_049_000),
])
def test_parameter_counts_match_torchvision(depth, torchvision_params, fc_params):
    # torchvision's published parameter counts (ImageNet models, 1000 classes) minus the fc we leave out
    assert sum(p.numel() for p in ResNet(depth).parameters()) == torchvision_params - fc_params


def test_video_modules_add_keys_but_rename_none():
    model = build_model(arch="tsm_w3", depth=50, num_segments=4)
    assert torchvision_keys(model.backbone) == {k: v.shape for k, v in ResNet(50).state_dict().items()}
    new = set(model.backbone.state_dict()) - set(torchvision_keys(model.backbone))
    assert new and all(".attention." in k for k in new)


def _imagenet_file(tmp_path, depth=18, drop_counters=False):
    """A torchvision-layout file: a trunk's state_dict with random values plus a 1000-class fc."""
    trunk = ResNet(depth)
    with torch.no_grad():
        for p in trunk.parameters():
            p.normal_()
    state = dict(trunk.state_dict())
    if drop_counters:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"] = torch.randn(1000, trunk.out_channels)
    state["fc.bias"] = torch.randn(1000)
    path = tmp_path / f"resnet{depth}.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("arch", ["tsm", "tsm_w3", "tsm_nl"])
def test_loader_round_trip_drops_fc_and_keeps_new_modules(tmp_path, arch):
    path, state = _imagenet_file(tmp_path)
    model = build_model(arch=arch, depth=18, num_segments=2, heads={"label": 5}, pretrained=str(path))
    loaded = model.backbone.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
    report = model.pretrained_report
    assert report.dropped == ["fc.weight", "fc.bias"]
    assert set(report.loaded) == set(state) - {"fc.weight", "fc.bias"}
    assert all(".attention." in k or ".non_local." in k for k in report.kept_new)
    assert bool(report.kept_new) == (arch != "tsm")


def test_loader_accepts_files_without_batchnorm_counters(tmp_path):
    path, _ = _imagenet_file(tmp_path, drop_counters=True)
    report = load_torchvision_resnet(ResNet(18), path)
    assert report.defaulted and all(k.endswith("num_batches_tracked") for k in report.defaulted)


def test_loader_accepts_wrapped_and_dataparallel_files(tmp_path):
    _, state = _imagenet_file(tmp_path)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    trunk = ResNet(18)
    load_torchvision_resnet(trunk, wrapped)
    assert torch.equal(trunk.conv1.weight, state["conv1.weight"])


def test_loader_lists_missing_unexpected_and_misshapen_keys(tmp_path):
    _, state = _imagenet_file(tmp_path)
    broken = dict(state)
    del broken["layer2.1.conv2.weight"]
    broken["layer5.0.conv1.weight"] = torch.zeros(1)
    broken["bn1.weight"] = torch.zeros(32)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(DataError) as error:
        load_torchvision_resnet(ResNet(18), path)
    message = str(error.value)
    assert str(path) in message
    assert "missing: layer2.1.conv2.weight" in message
    assert "unexpected: layer5.0.conv1.weight" in message
    assert "wrong shape: bn1.weight: file (32,) vs model (64,)" in message


def test_loader_refuses_a_file_of_another_depth(tmp_path):
    path, _ = _imagenet_file(tmp_path, depth=18)
    with pytest.raises(DataError, match="do not fit a torchvision ResNet-34"):
        load_torchvision_resnet(ResNet(34), path)


def test_loader_names_absent_and_unreadable_files(tmp_path):
    with pytest.raises(ResourceError, match="no such file"):
        load_torchvision_resnet(ResNet(18), tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a readable torch state_dict"):
        load_torchvision_resnet(ResNet(18), garbage)


# ---------------------------------------------------------------------- model.pretrained: imagenet (torch.hub)

@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch.hub cache under a temporary TORCH_HOME, and no way out: every HTTPS request goes to a
    closed local port, so a download attempt fails at once instead of fetching anything."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.mark.parametrize("depth, name", [(18, "resnet18-f37072fd.pth"), (50, "resnet50-0676ba61.pth"),
                                         (101, "resnet101-63fe2227.pth")])
def test_imagenet_names_torchvisions_v1_file_in_the_hub_cache(offline_hub, depth, name):
    from w3model.pretrained import IMAGENET_URLS, hub_path
    assert hub_path(IMAGENET_URLS[depth]) == offline_hub / name


def test_imagenet_loads_from_a_prefilled_hub_cache_and_says_it_is_not_the_published_file(offline_hub, caplog):
    offline_hub.mkdir(parents=True)
    path, state = _imagenet_file(offline_hub)
    path.rename(offline_hub / "resnet18-f37072fd.pth")
    model = build_model(arch="tsm_w3", depth=18, num_segments=2, pretrained="imagenet")
    assert model.pretrained_report.path == str(offline_hub / "resnet18-f37072fd.pth")
    assert torch.equal(model.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    # a random file under the published name: used (keys and shapes fit), with a warning naming it
    assert "is not the file torchvision published" in caplog.text and "f37072fd" in caplog.text


def test_imagenet_offline_without_the_file_says_which_file_to_put_where(offline_hub):
    with pytest.raises(ResourceError) as error:
        build_model(arch="tsm", depth=50, num_segments=2, pretrained="imagenet")
    message = str(error.value)
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    assert f"put it at {offline_hub / 'resnet50-0676ba61.pth'}" in message and "TORCH_HOME" in message
    assert not list(offline_hub.glob("*"))                    # no partial file left behind


def test_dataset_configs_start_from_imagenet_and_smoke_from_scratch():
    from helpers import REPO
    from train.config import load_config
    from w3model.pretrained import scratch_warning
    for name in ("sthv1", "sthv2", "egogesture", "epic"):
        assert load_config(REPO / "launch" / f"{name}.yaml")["model"]["pretrained"] == "imagenet"
    smoke = load_config(REPO / "launch" / "smoke.yaml")
    assert smoke["model"]["pretrained"] is None and "model.pretrained" in smoke.origins    # said on purpose
    assert scratch_warning(None, chosen_explicitly=True) is None
    assert scratch_warning("imagenet", chosen_explicitly=False) is None
    assert "from scratch" in scratch_warning(None, chosen_explicitly=False)
