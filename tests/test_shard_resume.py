"""Resumability: a run killed with SIGKILL and rerun gives the same samples, keys, labels and order
(and here the same bytes) as an uninterrupted run; damaged or missing shards are redone."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import read_webdataset, shard
from pipeline.synth import synthesize

SHARD = Path(__file__).resolve().parents[1] / "pipeline" / "shard.py"


def _samples(out: Path) -> dict[str, list[tuple[str, int | None]]]:
    m = json.loads((out / "manifest.json").read_text())
    return {split: [(s["__key__"], s["json"]["label"]) for s in read_webdataset(out, split)] for split in m["splits"]}


def _shas(out: Path) -> list[str]:
    m = json.loads((out / "manifest.json").read_text())
    return [s["sha256"] for e in m["splits"].values() for s in e["shards"]]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return synthesize("sthv2", tmp_path_factory.mktemp("raw") / "raw", classes=4, clips_per_class=8,
                      num_frames=48, width=128, height=96)   # slow enough to be killed midway


@pytest.fixture(scope="module")
def reference(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    assert shard(raw, out, "sthv2", "--shard-size", "5") == 0
    return out / "sthv2"


@pytest.mark.slow
def test_kill_9_and_rerun_equals_uninterrupted(raw, reference, tmp_path):
    cmd = [sys.executable, str(SHARD), "--dataset", "sthv2", "--root", str(raw), "--out", str(tmp_path),
           "--shard-size", "5", "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    clips = tmp_path / "sthv2" / ".work" / "clips"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(clips.glob("*/*.json"))) < 8:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "sthv2" / "manifest.json").exists()
    done = len(list(clips.glob("*/*.json")))
    assert 8 <= done < 32
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "32 = 32 + 0 (ok)" in rerun.stdout
    assert _samples(tmp_path / "sthv2") == _samples(reference)
    assert _shas(tmp_path / "sthv2") == _shas(reference)


def test_rerun_keeps_good_shards_and_redoes_damaged_ones(raw, reference, tmp_path):
    import shutil

    out = tmp_path / "sthv2"
    shutil.copytree(reference, out)
    m = json.loads((out / "manifest.json").read_text())
    shards = m["splits"]["train"]["shards"]
    (out / shards[0]["file"]).unlink()                                   # lost
    damaged = out / shards[1]["file"]
    damaged.write_bytes(damaged.read_bytes()[:1000])                     # cut short
    (out / "train" / f".{Path(shards[2]['file']).name}.tmp999").write_bytes(b"partial")   # a killed write
    kept = out / shards[2]["file"]
    before = kept.stat().st_mtime_ns
    assert shard(raw, tmp_path, "sthv2", "--shard-size", "5") == 0
    assert _samples(out) == _samples(reference) and _shas(out) == _shas(reference)
    assert kept.stat().st_mtime_ns == before                             # a verified shard is not rewritten
    assert not list((out / "train").glob(".*tmp*"))
