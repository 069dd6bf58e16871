"""Shared fixtures: where the real annotation files live, and skip rules that say why."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_ANNOTATIONS = Path(os.environ.get("W3_REAL_ANNOTATIONS", REPO.parent / "shared" / "real-annotations"))


@pytest.fixture(scope="session")
def real_annotations() -> Path:
    """The owners' published annotation files (../shared/real-annotations); never copied into the repo."""
    if not REAL_ANNOTATIONS.is_dir():
        pytest.skip(f"real annotation files not found at {REAL_ANNOTATIONS} (set W3_REAL_ANNOTATIONS)")
    return REAL_ANNOTATIONS
