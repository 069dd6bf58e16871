"""The shipped launch/slurm/train.sbatch on a real two-node SLURM cluster started by the test: both nodes
train the smoke config, a checkpoint lands, a pre-emption signal makes the trainer checkpoint and the
script requeue the job, and the requeued run resumes from that checkpoint and finishes."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from slurm_cluster import LocalSlurmCluster, missing_requirements
from helpers import train_data
from train.run_log import read_csv

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
    return train_data(tmp_path_factory.mktemp("smoke-data"), num_frames=32, size=(128, 96))


def _tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _submit(cluster: LocalSlurmCluster, tmp_path: Path, shards: Path, *overrides: str, **env: str):
    """Submit the shipped script with the smoke config; returns (job id, out_dir, job log file)."""
    out_dir = tmp_path / "run"
    settings = [f"data.shards={shards}", "train.batch_size=2", "train.log_every=1", "train.progress=false",
                "eval.every_epochs=0", *overrides]
    job = cluster.sbatch(SBATCH, "--output", str(tmp_path / "%x-%j.out"),
                         args=tuple(a for o in settings for a in ("--set", o)),
                         env={"CFG": "launch/smoke.yaml", "OUT_DIR": str(out_dir), "OMP_NUM_THREADS": "1",
                              **env}, cwd=REPO)
    return job, out_dir, tmp_path / f"w3-train-{job}.out"


def test_sbatch_trains_on_two_nodes_and_resumes_after_preemption(cluster, smoke_shards, tmp_path):
    job, out_dir, log_file = _submit(cluster, tmp_path, smoke_shards, f"train.max_steps={MAX_STEPS}",
                                     "train.ckpt_every=2")
    log = lambda: log_file.read_text() if log_file.exists() else ""  # noqa: E731

    # Pre-empt once the first checkpoint has landed: the warning SIGUSR1 that --signal=B:USR1@300 sends.
    first = out_dir / "checkpoints" / "step-00000002"
    cluster.wait_job(job, lambda f: (first / "COMPLETE").is_file() or f["JobState"] != "RUNNING" and
                     f["JobState"] != "PENDING", 240, "the first checkpoint", log_file)
    assert (first / "COMPLETE").is_file(), _tail(log())
    cluster.run("scancel", "--batch", "--signal=USR1", str(job))

    # Requeued: the first run is over, the second has not resumed yet (it would clear the marker).
    cluster.wait_job(job, lambda f: f["Restarts"] == "1" or f["JobState"] in ("COMPLETED", "FAILED"), 120,
                     "the requeue", log_file)
    marker = json.loads((out_dir / "PREEMPTED").read_text())
    step = marker["step"]
    assert marker["signal"] == "SIGUSR1" and 2 <= step < MAX_STEPS, marker
    ckpt = out_dir / "checkpoints" / f"step-{step:08d}"
    assert Path(marker["checkpoint"]) == ckpt and (ckpt / "COMPLETE").is_file()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert (state["step"], state["world_size"]) == (step, 2)
    assert (ckpt / "loader_rank00000.json").is_file() and (ckpt / "loader_rank00001.json").is_file()
    before = read_csv(out_dir / "metrics.csv")
    assert [int(r["step"]) for r in before] == list(range(1, step + 1))

    fields = cluster.wait_finished(job, 240, log_file)
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

    after = read_csv(out_dir / "metrics.csv")
    assert [int(r["step"]) for r in after] == list(range(1, MAX_STEPS + 1))
    assert after[:step] == before          # rows of the first run kept; the rest came from the resumed run
    assert all(float(r["loss"]) > 0 for r in after)
    assert not (out_dir / "PREEMPTED").exists()
    assert (out_dir / "checkpoints" / f"step-{MAX_STEPS:08d}" / "COMPLETE").is_file()


def test_sbatch_runs_deepspeed_zero2_across_the_nodes(cluster, smoke_shards, tmp_path):
    """ACCEL_CONFIG: the DeepSpeed config's processes span both nodes (torchrun per node, not pdsh)."""
    job, out_dir, log_file = _submit(cluster, tmp_path, smoke_shards, "train.max_steps=2",
                                     ACCEL_CONFIG="launch/accelerate/zero2.yaml")
    fields = cluster.wait_finished(job, 240, log_file)
    text = log_file.read_text()
    assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), _tail(text)
    for task in (0, 1):
        assert re.search(rf"^{task}: .*DEEPSPEED x2\b", text, re.M), _tail(text)
    ckpt = out_dir / "checkpoints" / "step-00000002"
    assert (ckpt / "COMPLETE").is_file()
    assert sorted(p.name for p in (ckpt / "pytorch_model").glob("zero_pp_rank_*_optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert [int(r["step"]) for r in read_csv(out_dir / "metrics.csv")] == [1, 2]


def test_scancel_ends_the_job_for_good(cluster, smoke_shards, tmp_path):
    """SIGTERM to the batch script is a cancellation (or the time limit), never a reason to requeue."""
    job, out_dir, log_file = _submit(cluster, tmp_path, smoke_shards, "train.max_steps=200")
    cluster.wait_job(job, lambda f: (out_dir / "metrics.csv").is_file() or f["JobState"] not in
                     ("RUNNING", "PENDING"), 180, "training to start", log_file)
    cluster.run("scancel", str(job))
    cluster.wait_finished(job, 60, log_file)
    cluster.wait_nodes_idle(60)     # the batch script has ended: a requeue would have happened by now
    fields = cluster.job(job)
    text = log_file.read_text()
    assert (fields["JobState"], fields["Restarts"]) == ("CANCELLED", "0"), _tail(text)
    assert "not requeueing" in text and "requeueing job" not in text, _tail(text)


def test_a_failing_trainer_fails_the_job_without_requeue(cluster, tmp_path):
    missing = tmp_path / "no-shards"
    job, out_dir, log_file = _submit(cluster, tmp_path, missing)
    fields = cluster.wait_finished(job, 120, log_file)
    text = log_file.read_text()
    assert (fields["JobState"], fields["Restarts"]) == ("FAILED", "0"), _tail(text)
    assert str(missing) in text and "requeueing" not in text, _tail(text)


def test_sbatch_refuses_out_dir_override(cluster, tmp_path):
    """The script watches OUT_DIR for the pre-emption marker, so a second out_dir via --set is an error."""
    job = cluster.sbatch(SBATCH, "--output", str(tmp_path / "%j.out"), args=("--set", "out_dir=elsewhere"),
                         env={"CFG": "launch/smoke.yaml", "OUT_DIR": str(tmp_path / "run")}, cwd=REPO)
    fields = cluster.wait_finished(job, 60)
    assert (fields["JobState"], fields["ExitCode"]) == ("FAILED", "2:0")
    assert "set the run folder with OUT_DIR=..., not --set out_dir=elsewhere" in (tmp_path / f"{job}.out").read_text()


CACHE_SBATCH = REPO / "launch" / "slurm" / "teacher_cache.sbatch"


def test_the_cache_build_is_preempted_requeued_and_equals_a_one_node_build(cluster, cache_shards, teacher_run,
                                                                          tmp_path):
    """launch/slurm/teacher_cache.sbatch on both nodes: USR1 once the first part is written -> the builders
    stop (exit 75) -> requeue -> the rest is built -> the cache is byte for byte a one-node build's."""
    import filecmp

    from helpers import cache_cmd, run_tool, stage2_overrides, stage2_sets

    views = "data.train_views=64"            # enough work that the signal finds the build under way
    cache = tmp_path / "cache"
    sets = stage2_overrides(cache_shards, teacher_run, cache, views, "train.progress=false")
    log_file = tmp_path / "cache.out"
    job = cluster.sbatch(CACHE_SBATCH, "--output", str(log_file), args=tuple(a for s in sets for a in ("--set", s)),
                         env={"CFG": "launch/smoke.yaml", "OMP_NUM_THREADS": "1"}, cwd=REPO)
    cluster.wait_job(job, lambda f: any((cache / "parts").glob("*.json")) or f["JobState"] not in
                     ("RUNNING", "PENDING"), 240, "the first cache part", log_file)
    cluster.run("scancel", "--batch", "--signal=USR1", str(job))
    fields = cluster.wait_finished(job, 300, log_file)
    text = log_file.read_text()
    assert (fields["JobState"], fields["ExitCode"], fields["Restarts"]) == ("COMPLETED", "0:0", "1"), _tail(text)
    first_run, _, second_run = text.partition(f"job {job} restart 1:")
    assert "got SIGUSR1" in first_run and f"requeueing job {job}" in first_run, _tail(text)
    assert re.search(r"^[01]: built part", first_run, re.M) and re.search(r"^[01]: built part", second_run, re.M)
    assert re.search(r"^0: teacher cache .*: complete", second_run, re.M), _tail(second_run)

    one_node = tmp_path / "one-node"
    done = run_tool(cache_cmd("build", *stage2_sets(cache_shards, teacher_run, one_node, views)))
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (one_node / "parts").iterdir() if not p.name.startswith("."))
    assert names == sorted(p.name for p in (cache / "parts").iterdir() if not p.name.startswith("."))
    for name in ["cache.json", *(f"parts/{n}" for n in names)]:
        assert filecmp.cmp(one_node / name, cache / name, shallow=False), name
