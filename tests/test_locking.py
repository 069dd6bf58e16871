"""One run per output folder (pipeline/locking.py): a second shard run into one --out, or a second trainer
into one out_dir, is refused naming the holder; the lock of a killed run, or of an earlier run of the same
SLURM job, is taken over. Holders are real processes holding the lock through the same module."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import REPO, make_raw, run_env, run_train, shard, tiny
from pipeline.errors import ResourceError
from pipeline.locking import LOCK_NAME, FolderLock

HOLD = ("import sys, time; from pipeline.locking import FolderLock; FolderLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(600)")


@contextmanager
def held(folder: Path, **env: str):
    """A separate process holding `folder`'s lock until the block ends (or until it is killed in it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), "holder-marker"], cwd=REPO,
                            env={**run_env(), **env}, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_held_folder_is_refused_naming_the_holder(tmp_path):
    with held(tmp_path) as holder:
        with pytest.raises(ResourceError) as err:
            FolderLock(tmp_path, what="--out").acquire()
        message = str(err.value)
        assert f"pid {holder.pid}" in message and f"host {socket.gethostname()}" in message
        assert "holder-marker" in message and "started 20" in message and "--out" in message


def test_the_lock_of_a_killed_run_is_taken_over_and_a_released_one_leaves_no_file(tmp_path, capsys):
    with held(tmp_path) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = FolderLock(tmp_path).acquire()
    assert f"pid {holder.pid}" in capsys.readouterr().err          # says whose lock it took over
    assert f'"pid": {os.getpid()}' in (tmp_path / LOCK_NAME).read_text()
    with pytest.raises(ResourceError, match=f"pid {os.getpid()}"):  # a lock is not re-entrant, even in-process
        FolderLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()
    FolderLock(tmp_path).acquire().release()


def test_a_requeued_slurm_job_takes_over_the_lock_of_its_earlier_run(tmp_path, monkeypatch):
    """The first run's node died and its filesystem still holds its lock: the same job, restarted, may go on;
    another job may not."""
    with held(tmp_path, SLURM_JOB_ID="4242", SLURM_RESTART_COUNT="0"):
        monkeypatch.setenv("SLURM_JOB_ID", "4243")
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        with pytest.raises(ResourceError, match="SLURM job 4242 .restart 0."):
            FolderLock(tmp_path).acquire()
        monkeypatch.setenv("SLURM_JOB_ID", "4242")
        FolderLock(tmp_path).acquire().release()


def test_a_second_shard_run_into_one_out_is_refused(tmp_path, capsys):
    raw = make_raw(tmp_path, "sthv2")
    with held(tmp_path / "shards" / "sthv2") as holder:
        assert shard(raw, tmp_path / "shards", "sthv2") == 2
        err = capsys.readouterr().err
        assert "resource error" in err and f"pid {holder.pid}" in err and "--out" in err
    assert not (tmp_path / "shards" / "sthv2" / "manifest.json").exists()


def test_a_second_trainer_into_one_out_dir_is_refused(train_shards, tmp_path):
    with held(tmp_path) as holder:
        done = run_train(tiny(train_shards, tmp_path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"pid {holder.pid}" in done.stderr and "out_dir" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "metrics.csv").exists() and not (tmp_path / "config.yaml").exists()
