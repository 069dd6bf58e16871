"""Run configs: defaults + experiment YAML + --set, typed and validated; errors name the key path."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.errors import ConfigError, ResourceError
from helpers import REPO, run_env
from pipeline.loader import build_loader
from train.config import load_config, scaled_lr, shards_dir
from train.optim import lr_multiplier

EXPERIMENTS = ["sthv1", "sthv2", "egogesture", "epic", "smoke", "sthv1_mfr", "sthv2_mfr", "egogesture_mfr", "epic_mfr",
               "smoke_mfr"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_shipped_experiment_loads(name):
    cfg = load_config(REPO / "launch" / f"{name}.yaml")
    assert cfg["optim"]["momentum"] == 0.9
    assert cfg["optim"]["clip_grad"] == 20.0
    if not name.startswith("smoke"):
        assert cfg["optim"]["lr_per_64"] == 0.01
        assert cfg["train"]["epochs"] == 50 and cfg["model"]["dropout"] == 0.5
        assert cfg["data"]["num_segments"] in (8, 16) and cfg["model"]["depth"] == 50


def test_epic_follows_action_accuracy():
    cfg = load_config(REPO / "launch" / "epic.yaml")
    assert cfg["data"]["dataset"] == "epic100"
    assert cfg["eval"]["best_metric"] == "action_top1" and cfg["eval"]["epic_submission"] is True


def test_overrides_are_coerced_to_the_defaults_types():
    cfg = load_config(REPO / "launch" / "sthv2.yaml", [
        "train.batch_size=4", "optim.lr_per_64=1", "out_dir=123", "optim.lr_steps=[5, 9]",
        "train.progress=false", "model.pretrained=/weights/r50.pth", "model.shift_div=4"])
    assert cfg["train"]["batch_size"] == 4
    assert cfg["optim"]["lr_per_64"] == 1.0 and isinstance(cfg["optim"]["lr_per_64"], float)
    assert cfg["out_dir"] == "123"
    assert cfg["optim"]["lr_steps"] == [5, 9]
    assert cfg["train"]["progress"] is False
    assert cfg["model"]["pretrained"] == "/weights/r50.pth"
    assert cfg["model"]["shift_div"] == 4          # a w3model setting without a default in defaults.yaml
    assert load_config(None, ["model.pretrained=null"])["model"]["pretrained"] is None


def test_exponents_without_a_dot_are_numbers_in_files_and_overrides(tmp_path):
    """PyYAML (YAML 1.1) reads `1e-3` as a string; a config takes it as the number a user means. This
    failed before the config loader's YAML 1.2 float rule ("optim.weight_decay: expected float, got str")."""
    exp = tmp_path / "exp.yaml"
    exp.write_text("optim:\n  weight_decay: 1e-4\n  lr_per_64: 2E-2\n")
    cfg = load_config(exp, ["optim.clip_grad=5e1"])
    assert cfg["optim"]["weight_decay"] == 1e-4 and cfg["optim"]["lr_per_64"] == 0.02
    assert cfg["optim"]["clip_grad"] == 50.0
    assert load_config(None, ["out_dir=1e-3"])["out_dir"] == "1e-3"     # a string key keeps the text


@pytest.mark.parametrize("override, names", [
    ("train.batch_size=eight", "train.batch_size"),
    ("train.batch_sise=8", "train.batch_sise"),
    ("optim.lr_steps=[a, b]", "optim.lr_steps[0]"),
    ("train.progress=1", "train.progress"),
    ("optim.schedule=linear", "optim.schedule"),
    ("train.batch_size=0", "train.batch_size"),
    ("model.shift_div=x", "model.shift_div"),
    ("model.arch=resnet", "model.arch"),
    ("model.num_segments=4", "data.num_segments"),
    ("model.heads={a: 2}", "manifest"),
    ("data.crop_size=300", "data.crop_size"),
    ("eval.mode=multi", "eval.mode"),
    ("train.compile=inductor", "train.compile"),
    ("nonsense", "key.path=value"),
])
def test_bad_overrides_name_the_key(override, names):
    with pytest.raises(ConfigError, match=r".*" + names.replace("[", r"\[").replace("]", r"\]")):
        load_config(REPO / "launch" / "sthv2.yaml", [override])


def test_yaml_errors_name_file_line_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("out_dir: x\ntrain:\n  epochs: 3\n  batch_size: many\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:4: train\.batch_size: expected int, got str"):
        load_config(bad)
    bad.write_text("data:\n  dataset: sthv2\n  shard_dir: /x\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3: unknown key 'data\.shard_dir'"):
        load_config(bad)
    bad.write_text("optim: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim: expected a mapping"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    with pytest.raises(ResourceError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_missing_shards_name_the_command_that_makes_them(tmp_path):
    cfg = load_config(REPO / "launch" / "egogesture.yaml", [f"data.shards={tmp_path}"])
    with pytest.raises(ResourceError) as err:
        build_loader(shards_dir(cfg), cfg.loaders["train"])
    message = str(err.value)
    assert f"python pipeline/shard.py --dataset egogesture --root <RAW_DIR> --out {tmp_path}" in message
    assert str(tmp_path / "egogesture") in message


def test_lr_is_0_01_per_64_clips_of_the_global_batch():
    cfg = load_config(REPO / "launch" / "sthv2.yaml")       # batch 8 per process
    assert scaled_lr(cfg, world_size=8) == pytest.approx(0.01)
    assert scaled_lr(cfg, world_size=1) == pytest.approx(0.00125)
    cfg = load_config(REPO / "launch" / "sthv2.yaml", ["train.grad_accum=4", "train.batch_size=16"])
    assert scaled_lr(cfg, world_size=16) == pytest.approx(0.01 * 16 * 4 * 16 / 64)


def test_schedules():
    cfg = load_config(REPO / "launch" / "sthv2.yaml", ["optim.warmup_epochs=0.5"])   # steps at 20, 40
    mult = lambda step: lr_multiplier(step, cfg=cfg, steps_per_epoch=10)  # noqa: E731
    assert [mult(s) for s in (0, 4)] == [pytest.approx(0.2), pytest.approx(1.0)]
    assert mult(199) == 1.0 and mult(200) == pytest.approx(0.1) and mult(400) == pytest.approx(0.01)
    cfg = load_config(REPO / "launch" / "egogesture.yaml")                           # cosine, 1 warm-up epoch
    mult = lambda step: lr_multiplier(step, cfg=cfg, steps_per_epoch=10)  # noqa: E731
    assert mult(9) == 1.0 and mult(10) == pytest.approx(1.0)
    assert mult(10 + 245) == pytest.approx(0.5) and mult(500) == pytest.approx(0.0, abs=1e-12)


def test_cli_prints_the_error_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_step: 3\n")
    done = subprocess.run([sys.executable, "train/run.py", "--cfg", str(bad)], cwd=REPO, env=run_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "unknown key 'train.max_step'" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "train/run.py", "--cfg", "launch/sthv2.yaml", "--set",
                           f"data.shards={tmp_path}"], cwd=REPO, env=run_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "python pipeline/shard.py --dataset sthv2" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("section, key, value, says", [
    ("data", "crop_size", 300, "must not exceed"),         # checked by the loader's settings (pipeline)
    ("data", "backend", "ffcv", "is not one of dali, reference"),
    ("data", "num_threads", 0, "must be >= 1"),
    ("data", "py_workers", -1, "must be >= 0"),
    ("data", "shuffle_window", 0, "must be >= 1"),
    ("data", "bad_sample", "ignore", "is not one of raise, skip"),
    ("data", "train_split", "", "expected a split name"),
    ("model", "depth", 152, "is not one of"),              # checked by w3model's ModelConfig
    ("model", "arch", "resnet", "expected one of"),
    ("model", "dropout", 1.5, "must be in [0, 1)"),
    ("model", "shift_div", 0, "must be >= 1"),
    ("train", "batch_size", 0, "must be > 0"),             # checked by the trainer's config
    ("optim", "schedule", "linear", "is not one of"),
    ("eval", "mode", "train", "is not one of val, test"),
    ("eval", "split", "", "expected a split name"),
])
def test_one_message_per_bad_setting_names_its_yaml_line(tmp_path, section, key, value, says):
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"out_dir: x\n{section}:\n  {key}: {value!r}\n")
    with pytest.raises(ConfigError) as err:
        load_config(exp)
    assert str(err.value).startswith(f"{exp}:3: {section}.{key}"), str(err.value)
    assert says in str(err.value)
    with pytest.raises(ConfigError) as err:                # the same check, told where --set gave it
        load_config(None, [f"{section}.{key}={value}"])
    assert str(err.value).startswith(f"--set: {section}.{key}"), str(err.value)


def test_data_num_segments_errors_name_the_data_key(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text("data:\n  num_segments: 0\n")
    with pytest.raises(ConfigError, match=rf"^{exp}:2: data\.num_segments: must be >= 1"):
        load_config(exp)


def test_a_setting_the_trainer_fixes_per_role_names_the_key_it_came_from():
    cfg = load_config(None, ["eval.batch_size=3", "data.crop_size=64", "data.scale_size=64"])
    assert cfg.loaders["eval"].batch_size == 3 and cfg.loaders["train"].batch_size == 8
    assert cfg.loaders["train"].label("split") == "data.train_split"
    assert cfg.loaders["eval"].label("batch_size") == "--set: eval.batch_size"
    assert cfg.loaders["train"].label("crop_size") == "--set: data.crop_size"
