"""Shared fixtures: where the real annotation files live (with skip rules that say why), and the session's
tiny shard sets, made once by the project's own tools (helpers.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import REPO, STAGE2, loader_shards, run_train, tiny, train_data
from pipeline.synth import synthesize_and_shard

REAL_ANNOTATIONS = Path(os.environ.get("W3_REAL_ANNOTATIONS", REPO.parent / "shared" / "real-annotations"))


@pytest.fixture(scope="session")
def real_annotations() -> Path:
    """The owners' published annotation files (../shared/real-annotations); never copied into the repo."""
    if not REAL_ANNOTATIONS.is_dir():
        pytest.skip(f"real annotation files not found at {REAL_ANNOTATIONS} (set W3_REAL_ANNOTATIONS)")
    return REAL_ANNOTATIONS


@pytest.fixture(scope="session")
def loader_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("loader")


@pytest.fixture(scope="session")
def vp9_shards(loader_tmp) -> Path:
    return loader_shards(loader_tmp, "vp9")


@pytest.fixture(scope="session")
def mjpeg_shards(loader_tmp) -> Path:
    return loader_shards(loader_tmp, "mjpeg")


@pytest.fixture(scope="session")
def epic_shards(loader_tmp) -> Path:
    """EPIC-KITCHENS-100: verb and noun heads, actions cut from long videos."""
    return loader_shards(loader_tmp, "vp9", splits="train", dataset="epic100",
                         raw_size=dict(classes=4, clips_per_class=2, num_frames=24, width=96, height=64))


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory) -> Path:
    """The `data.shards` folder of the trainer tests' tiny sthv2 set."""
    return train_data(tmp_path_factory.getbasetemp() / "train_shards")


@pytest.fixture(scope="session")
def cache_shards(tmp_path_factory) -> Path:
    """The trainer tests' sthv2 set again, in shards of 4 clips: 4 training shards, so 4 cache parts."""
    return synthesize_and_shard("sthv2", tmp_path_factory.getbasetemp() / "cache_shards", codec="vp9",
                                shard_size=4, classes=4, clips_per_class=8, num_frames=16, width=64,
                                height=48).parent


@pytest.fixture(scope="session")
def teacher_run(train_shards, tmp_path_factory) -> Path:
    """A stage-1 run (TSM+W3 R18, 2 segments, 64x64) to serve as the teacher."""
    out = tmp_path_factory.getbasetemp() / "teacher_run"
    if not (out / "checkpoints" / "best").is_dir():
        done = run_train(tiny(train_shards, out, "train.epochs=1", *STAGE2))
        assert done.returncode == 0, done.stdout + done.stderr
    return out
