"""The local SLURM cluster the SLURM tests run on: two nodes really run a job's steps, requeue works, and
teardown leaves no process behind, even one that ignores SIGTERM."""
from __future__ import annotations

import time

import pytest

from slurm_cluster import LocalSlurmCluster, missing_requirements

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.timeout(240)]

JOB = """#!/bin/bash
#SBATCH --nodes=2 --ntasks-per-node=1 --requeue --open-mode=append
echo "batch restart=${SLURM_RESTART_COUNT:-0}"
srun --label bash -c 'echo "on $SLURMD_NODENAME nodeid=$SLURM_NODEID"'
if [[ ${SLURM_RESTART_COUNT:-0} == 0 ]]; then scontrol requeue "$SLURM_JOB_ID"; sleep 30; fi
"""

STUBBORN = """#!/bin/bash
#SBATCH --nodes=2 --ntasks-per-node=1
srun bash -c 'trap "" TERM; touch "$MARK_DIR/up-$SLURM_NODEID"; sleep 600'
"""


@pytest.fixture
def tmp_cluster_root(tmp_path):
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    return tmp_path


def test_two_nodes_run_a_step_and_a_requeued_job_runs_again(tmp_cluster_root):
    with LocalSlurmCluster(tmp_cluster_root / "cluster") as cluster:
        script = tmp_cluster_root / "job.sh"
        script.write_text(JOB)
        job = cluster.sbatch(script, "--output", str(tmp_cluster_root / "job-%j.out"), cwd=tmp_cluster_root)
        fields = cluster.wait_job(job, lambda f: f["JobState"] == "COMPLETED" and f["Restarts"] == "1", 90,
                                  "a requeued second run to complete")
        log = (tmp_cluster_root / f"job-{job}.out").read_text()
    assert fields["NodeList"] == "n[1-2]"
    assert "batch restart=0" in log and "batch restart=1" in log, log
    for task, node in ((0, "n1"), (1, "n2")):
        assert log.count(f"{task}: on {node} nodeid={task}") == 2, log     # once per run
    assert cluster.leftover_pids() == []


def test_teardown_kills_daemons_and_jobs_that_ignore_sigterm(tmp_cluster_root):
    marks = tmp_cluster_root / "marks"
    marks.mkdir()
    cluster = LocalSlurmCluster(tmp_cluster_root / "cluster")
    with cluster:
        script = tmp_cluster_root / "stubborn.sh"
        script.write_text(STUBBORN)
        cluster.sbatch(script, "--output", str(tmp_cluster_root / "stubborn-%j.out"), env={"MARK_DIR": str(marks)})
        deadline = time.monotonic() + 60
        while len(list(marks.iterdir())) < 2:
            assert time.monotonic() < deadline, "the job's tasks did not start on both nodes"
            time.sleep(0.3)
        assert cluster.running_daemons() == ["munged", "slurmctld", "slurmd-n1", "slurmd-n2"]
        assert len(cluster.leftover_pids()) >= 8     # the daemons, and per node a slurmstepd and a task
    assert cluster.running_daemons() == []
    assert cluster.leftover_pids() == []
