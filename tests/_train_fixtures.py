"""Shared pieces of the trainer tests: one tiny real shard set per session, and the trainer's CLIs.

The shards come from the real tools (pipeline/synth.py -> pipeline/shard.py, VP9 so DALI decodes on CPU);
runs use a tiny model (ResNet-18, 2 segments, 32x32 crops) so that a step takes a fraction of a second.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train.run_log import read_csv

REPO = Path(__file__).resolve().parents[1]
DATASET = "sthv2"
CLASSES = 4
CLIPS_PER_CLASS = 8          # synth splits them 2:1:1 -> 16 train, 8 val, 8 test clips


def run_env() -> dict[str, str]:
    # scripts run by path get their own folder first on sys.path; the repo root makes the packages importable
    # however the project was installed. One thread per process keeps runs reproducible and the cores shared.
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=run_env(), capture_output=True, text=True, timeout=timeout)


def make_shards(root: Path, dataset: str = DATASET, *, num_frames: int = 16, size: tuple[int, int] = (64, 48)
                ) -> Path:
    """<root>/shards (reused when a previous test of the session made it); `size` is (width, height)."""
    shards = root / "shards"
    if (shards / dataset / "manifest.json").is_file():
        return shards
    raw = root / "raw"
    for cmd in ([sys.executable, "pipeline/synth.py", "--dataset", dataset, "--out", str(raw),
                 "--classes", str(CLASSES), "--clips-per-class", str(CLIPS_PER_CLASS), "--num-frames",
                 str(num_frames), "--width", str(size[0]), "--height", str(size[1])],
                [sys.executable, "pipeline/shard.py", "--dataset", dataset, "--root", str(raw), "--out",
                 str(shards), "--codec", "vp9", "--short-side", "0", "--no-progress", "--workers", "1"]):
        done = _run(cmd)
        assert done.returncode == 0, done.stdout + done.stderr
    return shards


@pytest.fixture(scope="session")
def train_shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.getbasetemp() / "train_shards")


def tiny(shards: Path, out_dir: Path, *extra: str, arch: str = "tsm_w3", cfg: str = "smoke") -> list[str]:
    """--cfg/--set arguments of a tiny run: 4 steps per epoch (16 clips, batch 4), every step logged."""
    sets = [f"data.shards={shards}", f"out_dir={out_dir}", f"model.arch={arch}", "model.depth=18",
            "model.dropout=0.5", "data.num_segments=2", "data.crop_size=32", "data.scale_size=40",
            "data.num_threads=1", "train.batch_size=4", "train.epochs=2", "train.precision=fp32",
            "train.log_every=1", "train.ckpt_every=3", "train.keep_checkpoints=2", "train.progress=false",
            "optim.lr_per_64=0.2", "optim.schedule=cosine", "optim.warmup_epochs=1.0", "eval.batch_size=4",
            "eval.every_epochs=1", *extra]
    return ["--cfg", str(REPO / "launch" / f"{cfg}.yaml")] + [a for s in sets for a in ("--set", s)]


def train_cmd(args: list[str], launcher: list[str] | None = None) -> list[str]:
    if launcher is None:
        return [sys.executable, "train/run.py", *args]
    return [sys.executable, "-m", "accelerate.commands.launch", *launcher, "train/run.py", *args]


def run_train(args: list[str], launcher: list[str] | None = None, timeout: int = 300
              ) -> subprocess.CompletedProcess:
    return _run(train_cmd(args, launcher), timeout=timeout)


def read_metrics(out_dir: Path, name: str = "metrics.csv") -> list[dict]:
    return read_csv(out_dir / name)


def losses(out_dir: Path) -> list[tuple[int, str]]:
    """(step, loss exactly as written) per logged step."""
    return [(int(r["step"]), r["loss"]) for r in read_metrics(out_dir)]


def run_until_step_then_signal(args: list[str], out_dir: Path, step: int, sig: int,
                               launcher: list[str] | None = None, pick_pid=None, timeout: float = 300
                               ) -> tuple[int, str]:
    """Start a run, wait until metrics.csv shows `step`, send `sig` (to the process `pick_pid(proc)`
    chooses, default the run itself); returns (exit status, output)."""
    proc = subprocess.Popen(train_cmd(args, launcher), cwd=REPO, env=run_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            rows = losses(out_dir)
            if rows and rows[-1][0] >= step:
                os.kill(pick_pid(proc) if pick_pid else proc.pid, sig)
                break
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out

