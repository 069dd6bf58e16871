"""The shipped launch/slurm/train.sbatch on a real two-node SLURM cluster started by the test: both nodes
train the smoke config, a checkpoint lands, a pre-emption signal makes the trainer checkpoint and the
script requeue the job, and the requeued run resumes from that checkpoint and finishes."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _slurm_cluster import LocalSlurmCluster, missing_requirements

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[1]
SBATCH = REPO / "launch" / "slurm" / "train.sbatch"
MAX_STEPS = 16


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    with LocalSlurmCluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running
    assert running.leftover_pids() == [], "teardown left processes of the cluster running"


@pytest.fixture(scope="module")
def smoke_shards(tmp_path_factory) -> Path:
    """A small synthetic sthv2 set in the smoke config's format (its header has the full-size commands)."""
    root = tmp_path_factory.mktemp("smoke-data")
    run = lambda *argv: subprocess.run([sys.executable, *argv], cwd=REPO, check=True, capture_output=True,  # noqa: E731
                                       timeout=240)
    run("pipeline/synth.py", "--dataset", "sthv2", "--out", str(root / "raw"), "--classes", "4",
        "--clips-per-class", "8", "--num-frames", "32", "--width", "128", "--height", "96")
    run("pipeline/shard.py", "--dataset", "sthv2", "--root", str(root / "raw"), "--out", str(root / "shards"),
        "--codec", "vp9", "--short-side", "0", "--workers", "1", "--no-progress")
    return root / "shards"


def _metrics(out_dir: Path) -> list[dict]:
    with open(out_dir / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.splitlines()[-lines:])


def test_sbatch_trains_on_two_nodes_and_resumes_after_preemption(cluster, smoke_shards, tmp_path):
    out_dir, log_dir = tmp_path / "run", tmp_path / "logs"
    log_dir.mkdir()
    overrides = [f"data.shards={smoke_shards}", "train.batch_size=2", f"train.max_steps={MAX_STEPS}",
                 "train.ckpt_every=2", "train.log_every=1", "train.progress=false", "eval.every_epochs=0"]
    job = cluster.sbatch(SBATCH, "--output", str(log_dir / "%x-%j.out"),
                         args=tuple(a for o in overrides for a in ("--set", o)),
                         env={"CFG": "launch/smoke.yaml", "OUT_DIR": str(out_dir)}, cwd=REPO)
    log_file = log_dir / f"w3-train-{job}.out"
    log = lambda: log_file.read_text() if log_file.exists() else ""  # noqa: E731

    # Pre-empt once the first checkpoint has landed: the warning SIGUSR1 that --signal=B:USR1@300 sends.
    first = out_dir / "checkpoints" / "step-00000002"
    cluster.wait_job(job, lambda f: (first / "COMPLETE").is_file() or f["JobState"] != "RUNNING" and
                     f["JobState"] != "PENDING", 240, "the first checkpoint")
    assert (first / "COMPLETE").is_file(), _tail(log())
    cluster.run("scancel", "--batch", "--signal=USR1", str(job))

    # Requeued: the first run is over, the second has not resumed yet (it would clear the marker).
    cluster.wait_job(job, lambda f: f["Restarts"] == "1" or f["JobState"] in ("COMPLETED", "FAILED"), 120,
                     "the requeue")
    marker = json.loads((out_dir / "PREEMPTED").read_text())
    step = marker["step"]
    assert marker["signal"] == "SIGUSR1" and 2 <= step < MAX_STEPS, marker
    ckpt = out_dir / "checkpoints" / f"step-{step:08d}"
    assert Path(marker["checkpoint"]) == ckpt and (ckpt / "COMPLETE").is_file()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert (state["step"], state["world_size"]) == (step, 2)
    assert (ckpt / "loader_rank00000.pt").is_file() and (ckpt / "loader_rank00001.pt").is_file()
    before = _metrics(out_dir)
    assert [int(r["step"]) for r in before] == list(range(1, step + 1))

    fields = cluster.wait_finished(job, 240)
    text = log()
    assert (fields["JobState"], fields["ExitCode"], fields["Restarts"]) == ("COMPLETED", "0:0", "1"), _tail(text)

    first_run, _, second_run = text.partition(f"job {job} restart 1:")
    assert second_run, _tail(text)
    for task, node in ((0, "n1"), (1, "n2")):
        # srun --label prefixes each node's lines with its task number; each node's local main process prints
        assert f"{task}: node {task} of 2 ({node}" in first_run and f"{task}: node {task} of 2 ({node}" in second_run
        assert re.search(rf"^{task}: .*MULTI_CPU x2\b", first_run, re.M), _tail(first_run)
        assert re.search(rf"^{task}: pre-empted by SIGUSR1 at step {step}\b", first_run, re.M), _tail(first_run)
    assert "got SIGUSR1" in first_run and f"requeueing job {job}" in first_run
    assert re.search(rf"^0: resumed from {re.escape(str(ckpt))} at step {step}\b", second_run, re.M), \
        _tail(second_run)

    after = _metrics(out_dir)
    assert [int(r["step"]) for r in after] == list(range(1, MAX_STEPS + 1))
    assert after[:step] == before          # rows of the first run kept; the rest came from the resumed run
    assert all(float(r["loss"]) > 0 for r in after)
    assert not (out_dir / "PREEMPTED").exists()
    assert (out_dir / "checkpoints" / f"step-{MAX_STEPS:08d}" / "COMPLETE").is_file()


def test_sbatch_refuses_out_dir_override(cluster, tmp_path):
    """The script watches OUT_DIR for the pre-emption marker, so a second out_dir via --set is an error."""
    job = cluster.sbatch(SBATCH, "--output", str(tmp_path / "%j.out"), args=("--set", "out_dir=elsewhere"),
                         env={"CFG": "launch/smoke.yaml", "OUT_DIR": str(tmp_path / "run")}, cwd=REPO)
    fields = cluster.wait_finished(job, 60)
    assert (fields["JobState"], fields["ExitCode"]) == ("FAILED", "2:0")
    assert "set the run folder with OUT_DIR=..., not --set out_dir=elsewhere" in (tmp_path / f"{job}.out").read_text()
