"""benchmarks/ablation.py end to end at a reduced setting: real runs of the trainer on the order task, the
table, an MFR row (its stage-1 teacher trained too, its cache built, the student trained from it), the
chart, resuming (finished runs are not run again) and a subset of rows."""
from __future__ import annotations

import json

import pytest

from helpers import run_tool

pytestmark = pytest.mark.slow


def _bench(work, *extra):
    return run_tool(["python3", "benchmarks/ablation.py", "--work", str(work), "--seeds", "1", "--epochs", "1",
                     "--clips-per-class", "8", *extra], timeout=600)


def test_reduced_benchmark_writes_table_and_chart_and_resumes(tmp_path):
    done = _bench(tmp_path, "--rows", "tsn,cbam_mfr")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "runs/tsn/seed0/result.json").read_text())
    assert result["clips"] == 20 and result["epochs"] == 1
    assert result["within_pair"] == 50.0               # a frame-bag model cannot tell a pair's clips apart
    assert not (tmp_path / "runs/tsn/seed0/checkpoints").exists()
    table = (tmp_path / "ablation.md").read_text()
    tsn = next(line for line in table.splitlines() if line.startswith("| TSN |"))
    assert f"| {result['top1']:.1f} | 1 |" in tsn and "| 19.7 (T1, 8 f) |" in tsn
    student = json.loads((tmp_path / "runs/cbam_mfr/seed0/result.json").read_text())
    mfr = next(line for line in table.splitlines() if line.startswith("| TSM+CBAM w/ MFR |"))
    assert f"| {student['top1']:.1f} | 1 |" in mfr and "50.5 (T7)" in mfr
    assert (tmp_path / "runs/tsm_cbam/seed0/checkpoints").is_dir()                 # the teacher keeps its own
    assert "fm" in (tmp_path / "runs/cbam_mfr/seed0/metrics.csv").read_text().splitlines()[0]
    assert (tmp_path / "caches/tsm_cbam/seed0/cache.json").is_file()
    assert "| TSM | arch=tsm | not run |" in table
    assert "TSN within pair-chance (50 %): within-pair accuracy 50.0 % (yes)" in table
    assert (tmp_path / "ablation.png").stat().st_size > 10_000
    again = _bench(tmp_path, "--rows", "tsn")
    assert again.returncode == 0 and "== tsn" not in again.stdout          # finished: not run again


def test_unknown_row_is_a_config_error(tmp_path):
    done = _bench(tmp_path, "--rows", "tsn,tsm_w4")
    assert done.returncode == 2 and "--rows: unknown tsm_w4" in done.stderr and "Traceback" not in done.stderr
