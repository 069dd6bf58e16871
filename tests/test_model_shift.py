"""Temporal shift: the TSM reference's semantics, and where the builder puts it."""
from __future__ import annotations

import pytest
import torch

from w3model import build_model
from w3model.shift import temporal_shift


def _clip(batch: int, frames: int, channels: int) -> torch.Tensor:
    """value = 1000*clip + 100*frame + channel (+1), so every entry says where it came from."""
    b = torch.arange(batch).view(batch, 1, 1, 1, 1)
    t = torch.arange(frames).view(1, frames, 1, 1, 1)
    c = torch.arange(channels).view(1, 1, channels, 1, 1)
    x = (1000 * b + 100 * t + c + 1).float().expand(batch, frames, channels, 2, 3)
    return x.reshape(batch * frames, channels, 2, 3).contiguous()


def test_shift_on_a_hand_built_tensor():
    batch, frames, channels = 2, 4, 16  # fold = 16 // 8 = 2
    out = temporal_shift(_clip(batch, frames, channels), frames, fold_div=8).view(batch, frames, channels, 2, 3)
    for b in range(batch):
        for t in range(frames):
            for c in range(channels):
                got = out[b, t, c]
                if c < 2:  # first fold: from frame t+1, zero after the last frame
                    want = 0.0 if t == frames - 1 else 1000 * b + 100 * (t + 1) + c + 1
                elif c < 4:  # second fold: from frame t-1, zero before the first frame
                    want = 0.0 if t == 0 else 1000 * b + 100 * (t - 1) + c + 1
                else:
                    want = 1000 * b + 100 * t + c + 1
                assert torch.all(got == want), (b, t, c, got.flatten()[0].item(), want)


def test_shift_never_mixes_clips_and_keeps_channels_last():
    x = _clip(3, 2, 8).contiguous(memory_format=torch.channels_last)
    out = temporal_shift(x, 2, fold_div=8)
    assert out.is_contiguous(memory_format=torch.channels_last)
    clip_of = (out // 1000).view(3, 2, 8, 2, 3)
    nonzero = out.view(3, 2, 8, 2, 3) != 0
    for b in range(3):
        assert torch.all(clip_of[b][nonzero[b]] == b)


def test_fold_rounds_down_and_small_channel_counts_do_not_shift():
    x = _clip(1, 3, 7)  # 7 // 8 == 0: nothing moves, as in the reference
    assert torch.equal(temporal_shift(x, 3), x)
    x = _clip(1, 3, 20)  # fold = 2 at shift_div 8, 5 at shift_div 4
    out = temporal_shift(x, 3, fold_div=4).view(1, 3, 20, 2, 3)
    assert torch.all(out[0, 2, :5] == 0) and torch.all(out[0, 0, 5:10] == 0) and torch.all(out[0, 1, 10:] != 0)


def _shifted_blocks(model) -> list[str]:
    return [f"layer{s}.{i}" for s, stage in enumerate(model.backbone.stages(), start=1)
            for i, block in enumerate(stage) if block.shift is not None]


def test_tsm_shifts_every_block_of_resnet50_and_tsn_none():
    assert len(_shifted_blocks(build_model(arch="tsm", depth=50, num_segments=4))) == 16
    assert _shifted_blocks(build_model(arch="tsn", depth=50, num_segments=4)) == []
    only = build_model(arch="tsm", depth=50, num_segments=4, shift_stages=[3, 4])
    assert _shifted_blocks(only) == [f"layer3.{i}" for i in range(6)] + [f"layer4.{i}" for i in range(3)]


def test_resnet101_shifts_every_other_block_of_every_stage_as_the_reference():
    """TSM's make_temporal_shift (blockres): n_round = 2 for all four stages once res4 has >= 23 blocks."""
    blocks = _shifted_blocks(build_model(arch="tsm", depth=101, num_segments=2))
    assert blocks == [f"layer{s}.{i}" for s, n in zip(range(1, 5), (3, 4, 23, 3)) for i in range(0, n, 2)]
    assert [sum(b.startswith(f"layer{s}.") for b in blocks) for s in range(1, 5)] == [2, 2, 12, 2]
    # place block wraps every block in the reference, whatever the depth
    assert len(_shifted_blocks(build_model(arch="tsm", depth=101, num_segments=2, shift_place="block"))) == 33


@pytest.mark.parametrize("place, identity_shifted", [("blockres", False), ("block", True)])
def test_shift_place_decides_whether_the_identity_path_is_shifted(place, identity_shifted):
    """blockres: the residual branch sees shifted frames, the identity the original ones."""
    model = build_model(arch="tsm", depth=18, num_segments=4, shift_place=place).eval()
    block = model.backbone.layer1[0]  # 64 -> 64 channels, no downsample: identity is x itself
    seen = {}
    block.conv1.register_forward_pre_hook(lambda m, args: seen.setdefault("conv1", args[0].clone()))
    x = torch.randn(8, 64, 5, 5)
    with torch.no_grad():
        out, _ = block(x)
        residual = block.residual(temporal_shift(x, 4))
    assert torch.equal(seen["conv1"], temporal_shift(x, 4))
    identity = temporal_shift(x, 4) if identity_shifted else x
    torch.testing.assert_close(out, torch.relu(residual + identity))
