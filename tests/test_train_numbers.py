"""Loud numeric failures: a non-finite setting is a config error, a diverging run stops with a numeric error
(exit 2) and saves nothing, the non-finite loss watch counts steps in a row on the device, non-finite weights
are never saved or scored, and a split without labels is not trained on."""
from __future__ import annotations

import math

import pytest
import torch

from helpers import REPO, read_metrics, run_train, tiny
from pipeline.errors import ConfigError, NumericError
from pipeline.loader import build_loader
from train import checkpoint as ckpt_io
from train.config import load_config, shards_dir
from train.loop import check_labelled
from train.nonfinite import LossWatch, check_weights


def _float_keys(node: dict, prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _float_keys(value, f"{prefix}{key}.")
        elif isinstance(value, float):
            yield f"{prefix}{key}"


FLOAT_KEYS = list(_float_keys(load_config(None)))


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_setting_must_be_finite(key, value):
    """`optim.lr_per_64: .nan` passed the `<= 0` check and trained NaN to exit 0."""
    with pytest.raises(ConfigError, match=rf"--set: {key}: (expected a finite number|must be in)"):
        load_config(None, [f"{key}={value}"])


def test_a_non_finite_setting_in_a_yaml_file_names_its_line(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("optim:\n  momentum: 0.9\n  lr_per_64: .nan\n")
    with pytest.raises(ConfigError, match=rf"^{exp}:3: optim.lr_per_64: expected a finite number, got nan"):
        load_config(exp)


def test_the_loss_watch_counts_non_finite_steps_in_a_row(capsys):
    watch = LossWatch(3, torch.device("cpu"), "train.max_nonfinite_steps")
    for losses in ([1.0], [math.nan], [2.0], [2.0, math.inf], [3.0]):    # micro-batches of each step
        for loss in losses:
            watch.add(torch.tensor(loss))
        watch.end_step()
    watch.check(5)                                   # 2 non-finite steps, never 2 in a row: a warning
    assert "2 more optimiser step(s) with a non-finite loss" in capsys.readouterr().out
    for _ in range(3):
        watch.add(torch.tensor(math.nan))
        watch.end_step()
    with pytest.raises(NumericError, match=r"in 3 optimiser step\(s\) in a row by step 8 \(5 such"):
        watch.check(8)


def test_non_finite_weights_are_named():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    check_weights(model, "saving")
    model[1].running_var[0] = math.inf
    with pytest.raises(NumericError, match=r"\(1.running_var on this rank\); not saving"):
        check_weights(model, "saving")


def test_training_on_a_split_without_labels_is_a_config_error(train_shards):
    cfg = load_config(REPO / "launch" / "smoke.yaml", [f"data.shards={train_shards}", "data.train_split=test",
                                                       "data.crop_size=32", "data.scale_size=40"])
    loader = build_loader(shards_dir(cfg), cfg.loaders["train"])
    with pytest.raises(ConfigError, match=r"--set: data.train_split: split 'test' of .* has no labels"):
        check_labelled(cfg, loader)
    check_labelled(cfg, build_loader(shards_dir(cfg), cfg.loaders["eval"]))       # val: labelled


@pytest.mark.slow
def test_a_diverging_run_stops_with_a_numeric_error_and_saves_nothing(train_shards, tmp_path):
    """A learning rate of 1e30 makes the loss NaN at step 2: before, the run went on, exited 0 and kept an
    all-NaN checkpoint as "best"."""
    done = run_train(tiny(train_shards, tmp_path, "optim.lr_per_64=1.0e+30", "optim.warmup_epochs=0.0"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "train/run.py: numeric error: the loss was not finite (NaN or inf) in 1 optimiser step(s) in a row " \
           "by step 2" in done.stderr and "train.max_nonfinite_steps" in done.stderr
    assert [r["loss"] for r in read_metrics(tmp_path)][-1] == "nan"          # the log shows it too
    assert ckpt_io.complete_step_checkpoints(tmp_path) == []
    assert not ckpt_io.is_complete(ckpt_io.checkpoints_root(tmp_path) / ckpt_io.BEST)
