"""Shared fixtures: where the real annotation files live (with skip rules that say why), and the session's
tiny shard sets, made once by the project's own tools (helpers.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import REPO, loader_shards, train_data

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
