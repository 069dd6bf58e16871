"""A full disk is a resource error naming the file or folder and the bytes it needed, from the shard tool
and the trainer, never a bare `[Errno 28]` or a library's traceback.

The disk is a real one: a small tmpfs mounted over the output folder inside a private user and mount
namespace (`unshare --user --map-root-user --mount`), so nothing is mounted on the machine itself and
nothing is left behind if a test dies. Where the kernel does not allow that, the tests skip and say so.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, make_raw, run_env, tiny, train_cmd

MOUNT = 'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"'


def _unshare_works(tmp: Path) -> str:
    probe = tmp / "probe"
    probe.mkdir(exist_ok=True)
    try:
        done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", MOUNT, "sh", "64k",
                               str(probe), "true"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return "the unshare command (util-linux) is not installed"
    return "" if done.returncode == 0 else f"unshare cannot mount a tmpfs here: {done.stderr.strip()}"


@pytest.fixture
def small_disk(tmp_path):
    """run(size, folder, cmd): `cmd` run with a tmpfs of `size` mounted over `folder`."""
    reason = _unshare_works(tmp_path)
    if reason:
        pytest.skip(f"needs a private mount namespace for a small tmpfs ({reason})")

    def run(size: str, folder: Path, cmd: list[str]) -> subprocess.CompletedProcess:
        folder.mkdir(parents=True, exist_ok=True)
        return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", MOUNT, "sh", size,
                               str(folder), *cmd], cwd=REPO, env=run_env(), capture_output=True, text=True,
                              timeout=300)
    return run


def _one_resource_error(done: subprocess.CompletedProcess, prog: str) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    message = done.stderr[done.stderr.rfind(f"{prog}: "):]
    assert message.startswith(f"{prog}: resource error: "), done.stderr
    return message


# (tmpfs size, what fills up first): the clips of step 1, the space check before a shard, a shard's index
@pytest.mark.parametrize("size, full_at", [("16k", ".work/clips/"), ("96k", "/train/sthv2-train-000000.tar"),
                                           ("128k", "/val/sthv2-val-000000.idx")])
def test_the_shard_tool_names_the_file_and_the_bytes(small_disk, tmp_path, size, full_at):
    raw = make_raw(tmp_path, "sthv2")
    out = tmp_path / "out"
    done = small_disk(size, out, [sys.executable, "pipeline/shard.py", "--dataset", "sthv2", "--root", str(raw),
                                  "--out", str(out), "--workers", "1", "--no-progress"])
    message = _one_resource_error(done, "pipeline/shard.py")
    assert f"{out}/sthv2/" in message and full_at in message, message
    assert "disk full" in message and " bytes, " in message and "needs " in message


@pytest.mark.slow
@pytest.mark.parametrize("size, says", [
    ("20m", "disk full writing checkpoint step-00000003 (SafetensorError"),   # the first checkpoint fails
    ("140m", "checkpoints/.tmp-best: disk full writing a checkpoint: needs "),  # the second does not fit
])
def test_the_trainer_names_the_checkpoint_and_the_bytes(small_disk, train_shards, tmp_path, size, says):
    out = tmp_path / "run"
    done = small_disk(size, out, train_cmd(tiny(train_shards, out)))
    message = _one_resource_error(done, "train/run.py")
    assert says in message and str(out) in message and " bytes" in message and "free" in message, message
