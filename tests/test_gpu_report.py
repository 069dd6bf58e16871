"""benchmarks/gpu_report.py on what the suite's steps really write: a real (tiny, eager) model_step_time.py
JSON becomes the W3 rows; a step that timed out is a row that says so, never a number, and the exit status
says findings."""
from __future__ import annotations

import json

from helpers import run_tool


def test_report_reads_real_step_json_and_names_failed_steps(tmp_path):
    step = run_tool(["python3", "benchmarks/model_step_time.py", "--depth", "18", "--size", "32", "--frames", "2",
                     "--batch", "1", "--warmup", "0", "--iters", "1", "--compile", "none", "--json"])
    assert step.returncode == 0, step.stdout + step.stderr
    (tmp_path / "step.json").write_text(step.stdout.strip().splitlines()[-1])
    (tmp_path / "steps.tsv").write_text("step\t0\t9\nloader\t124\t150\n")
    done = run_tool(["python3", "benchmarks/gpu_report.py", str(tmp_path)])
    assert done.returncode == 1, done.stdout + done.stderr             # findings: steps not measured
    result = json.loads((tmp_path / "gpu_suite.json").read_text())
    rows = {r["what"]: r for r in result["rows"]}
    eager = rows["TSM+W3 over TSM, step time, fp32 batch 1 32px, eager"]
    raw = result["raw"]["step"]["results"]
    over = raw["tsm_w3/none"]["median_s"] / raw["tsm/none"]["median_s"] - 1
    assert eager["measured"].startswith(f"{100 * over:+.1f} %") and eager["met"] == (over <= 0.10)
    assert rows["loader: not measured"]["measured"] == "step status 124 after 150 s: see loader.log"
    assert set(result["failed"]) == {"decode", "loader", "train", "mfr"}
    assert "| loader: not measured | - |" in (tmp_path / "gpu_suite.md").read_text()
