"""Shards for the loader tests, written by the project's own tools (pipeline/synth.py + pipeline/shard.py).

Tiny on purpose: 8 motion classes (all eight directions, so left/right classes exist for the flip map),
24-frame 96x64 clips in shards of 3, so a whole epoch decodes in well under a second.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.loader import ShardSet
from pipeline.shard import main as shard_main
from pipeline.synth import synthesize

RAW = dict(classes=8, clips_per_class=4, num_frames=24, width=96, height=64)
SMALL = dict(batch_size=4, num_segments=4, crop_size=48, scale_size=64, num_threads=2)  # loader settings


def make_shards(tmp: Path, codec: str, splits: str = "train,val,test", dataset: str = "sthv2",
                raw_size: dict | None = None) -> Path:
    raw = tmp / f"raw-{dataset}"
    if not raw.exists():
        synthesize(dataset, raw, **(raw_size or RAW))
    out = tmp / f"{dataset}-{codec}"
    rc = shard_main(["--dataset", dataset, "--root", str(raw), "--out", str(out), "--codec", codec,
                     "--short-side", "64", "--shard-size", "3", "--workers", "1", "--splits", splits,
                     "--no-progress"])
    assert rc == 0, f"pipeline/shard.py --dataset {dataset} --codec {codec} failed"
    return out / dataset


@pytest.fixture(scope="session")
def loader_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("loader")


@pytest.fixture(scope="session")
def vp9_shards(loader_tmp) -> Path:
    return make_shards(loader_tmp, "vp9")


@pytest.fixture(scope="session")
def mjpeg_shards(loader_tmp) -> Path:
    return make_shards(loader_tmp, "mjpeg")


@pytest.fixture(scope="session")
def epic_shards(loader_tmp) -> Path:
    """EPIC-KITCHENS-100: verb and noun heads, actions cut from long videos."""
    return make_shards(loader_tmp, "vp9", splits="train", dataset="epic100",
                       raw_size=dict(classes=4, clips_per_class=2, num_frames=24, width=96, height=64))


def copy_shards(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def corrupt_sample(shards_dir: Path, split: str, shard: int, index: int, member: str = "video") -> str:
    """Overwrite the start of one sample's video (its container header) or JSON in place; the tar stays
    intact. Returns the sample's key."""
    shards = ShardSet(shards_dir, split)
    key = shards.key(shard, index)
    offset, _ = shards.members(shard)[index][shards.video_ext if member == "video" else member]
    shards.close()
    with open(shards.files[shard].path, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * 64 if member == "video" else b"{{{")
    return key
