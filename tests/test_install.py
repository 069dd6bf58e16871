"""The project installed like a package (not editable), run from another folder: the defaults travel with
the code, and nothing reads the checkout."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from helpers import REPO, run_env, tiny

pytestmark = pytest.mark.slow


def test_a_non_editable_install_trains_the_smoke_config_from_another_folder(tmp_path, train_shards):
    source = tmp_path / "source"          # pip builds in the source folder: keep the checkout clean
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", "runs", "shards", "build", "*.egg-info",
                                                                "__pycache__", ".pytest_cache"))
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                           "--no-build-isolation", "--target", str(site), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (site / "train" / "defaults.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(run_env(), PYTHONPATH=str(site))          # the installed copy, not the checkout
    where = subprocess.run([sys.executable, "-c", "import train.config as c; print(c.DEFAULTS)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, timeout=60)
    assert where.stdout.strip() == str(site / "train" / "defaults.yaml"), where.stdout + where.stderr

    cfg = tmp_path / "smoke.yaml"                          # an experiment file outside the checkout
    cfg.write_text((REPO / "launch" / "smoke.yaml").read_text())
    args = tiny(train_shards, tmp_path / "run", "train.max_steps=2", "eval.every_epochs=0")
    args[1] = str(cfg)
    run = subprocess.run([sys.executable, "-m", "train.run", *args], cwd=elsewhere, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "run" / "metrics.csv").is_file() and (tmp_path / "run" / "eval.csv").is_file()
    assert not list(elsewhere.iterdir()), "the run wrote into the folder it was started from"
