"""Run configuration: the defaults (train/defaults.yaml, linked as launch/defaults.yaml), one experiment
YAML over them, then `--set a.b=v` overrides.

The defaults file is the schema (SlowFast style): a key that is not in it is unknown, and a value must have
the type of its default. Values are checked once, by the part that owns them: this module checks the
trainer's own sections (train, optim, eval); `data.*` is the loader's (pipeline.loader_settings) and
`model.*` the model's (w3model.ModelConfig), each given the label of every key (`launch/x.yaml:12:
data.crop_size`), so that every error names the file, line and key path the user wrote.
"""
from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.atomic import atomic_write
from pipeline.errors import ConfigError, ResourceError
from pipeline.loader_settings import LoaderSettings
from w3model.compile import COMPILE_MODES
from w3model.config import ModelConfig

DEFAULTS = Path(__file__).resolve().with_name("defaults.yaml")

# Keys whose default is null: the type a non-null value must have.
NULLABLE: dict[str, type] = {"mfr.teacher": str, "mfr.cache": str}
# The trainer's own settings (data.* and model.* belong to the loader and the model).
CHOICES = {
    "optim.schedule": ("steps", "cosine"),
    "train.precision": ("bf16", "fp32"),
    "eval.mode": ("val", "test"),
    "train.objective": ("classification", "mfr"),
    "train.compile": COMPILE_MODES,
    "mfr.source": ("cache", "online"),
    "mfr.reduction": ("mean", "frame_sum"),
    "mfr.init": ("pretrained", "scratch", "teacher"),
    "mfr.cache_dtype": ("uint8", "float16"),
}
POSITIVE = ("train.epochs", "train.batch_size", "train.grad_accum", "train.log_every", "train.max_nonfinite_steps",
            "eval.batch_size", "optim.lr_per_64")
NON_NEGATIVE = ("train.max_steps", "train.ckpt_every", "train.keep_checkpoints", "eval.every_epochs",
                "optim.weight_decay", "optim.clip_grad", "optim.warmup_epochs", "optim.momentum", "mfr.weight")
CLIPS_PER_BASE_LR = 64
# The model section is w3model's: defaults.yaml lists the common settings, any other ModelConfig field may
# be added, and ModelConfig checks keys, types and values.
OPEN_SECTION = "model."
MODEL_KEYS_ELSEWHERE = {"num_segments": "set data.num_segments (the loader and the model share it)",
                        "heads": "the heads come from the shards' manifest.json, not the config"}
# Loader settings per role: LoaderSettings field -> the key path that sets it (None: fixed by the role).
LOADER_KEYS = {
    "train": {"split": "data.train_split", "mode": None, "batch_size": "train.batch_size"},
    "eval": {"split": "eval.split", "mode": "eval.mode", "batch_size": "eval.batch_size"},
    # the teacher cache's build: the training views, in inference batches
    "cache": {"split": "data.train_split", "mode": None, "batch_size": "eval.batch_size"},
}
DATA_LOADER_KEYS = ("num_segments", "crop_size", "scale_size", "backend", "num_threads", "py_workers",
                    "bad_sample", "shuffle_window", "train_views")


class RunConfig(dict):
    """The merged values (nested plain dicts, as in the YAML) plus where each came from, and the loader
    settings of each role (train, eval), built (so checked) once when the config is loaded."""

    def __init__(self, values: dict, origins: dict[str, str], path: str | None = None):
        super().__init__(values)
        self.origins = origins
        self.path = path                # the experiment YAML, for messages that give a command to rerun
        self.loaders: dict[str, LoaderSettings] = {}

    def label(self, path: str) -> str:
        """`launch/x.yaml:12: data.crop_size`, `--set data.crop_size`, or the bare path for a default."""
        return f"{self.origins[path]}{path}" if path in self.origins else path


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader (plain data, nothing constructed from tags), reading ``1e-3`` and ``5E4`` as
    numbers as YAML 1.2 does; PyYAML's YAML 1.1 rules need a dot (``1.0e-3``) and turn ``1e-3`` into the
    string "1e-3", a learning rate refused as "expected float, got str"."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _load(text: str) -> Any:
    return yaml.load(text, Loader=ConfigLoader)


def _key_lines(text: str) -> dict[str, int]:
    """Key path -> 1-based line in a YAML text, so that errors can point at the line."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                path = f"{prefix}{key_node.value}"
                lines[path] = key_node.start_mark.line + 1
                walk(value_node, path + ".")

    root = yaml.compose(text, Loader=ConfigLoader)
    if root is not None:
        walk(root, "")
    return lines


def _read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    if not path.is_file():
        raise ResourceError(f"config file {path} not found (experiment configs live in launch/*.yaml)")
    text = path.read_text()
    try:
        data = _load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data, _key_lines(text)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_type(path: str, default: Any, value: Any, where: str) -> Any:
    """The value, if it has the default's type (an int is accepted where a float is expected)."""
    if default is None:
        expected = NULLABLE.get(path)
        if value is None or (expected is not None and isinstance(value, expected)):
            return value
        raise ConfigError(f"{where}{path}: expected {expected.__name__ if expected else 'null'} or null, "
                          f"got {_type_name(value)} {value!r}")
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
        if ok and not math.isfinite(value):      # NaN passes every `<= 0` check and trains NaN
            raise ConfigError(f"{where}{path}: expected a finite number, got {value!r}")
    elif isinstance(default, list):
        ok = isinstance(value, list)
        if ok and default:
            value = [_check_type(f"{path}[{i}]", default[0], v, where) for i, v in enumerate(value)]
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{where}{path}: expected {_type_name(default)}, got {_type_name(value)} {value!r}")
    return value


def _merge(base: dict, override: dict, prefix: str, source: str, lines: dict[str, int],
           origins: dict[str, str]) -> None:
    for key, value in override.items():
        path = f"{prefix}{key}"
        where = f"{source}:{lines[path]}: " if path in lines else f"{source}: "
        if prefix == OPEN_SECTION:
            if key in MODEL_KEYS_ELSEWHERE:
                raise ConfigError(f"{where}{path}: {MODEL_KEYS_ELSEWHERE[key]}")
            base[key] = value      # w3model's ModelConfig checks the key, its type and its value
            origins[path] = where
            continue
        if key not in base:
            section = prefix.rstrip(".") or "the top level"
            known = ", ".join(sorted(base))
            raise ConfigError(f"{where}unknown key {path!r} (known keys in {section}: {known})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{path}: expected a mapping (a section), got {_type_name(value)}")
            _merge(base[key], value, path + ".", source, lines, origins)
        else:
            base[key] = _check_type(path, base[key], value, where)
            origins[path] = where


def _parse_override(item: str, defaults: dict) -> tuple[str, Any]:
    """`a.b=v` -> (path, typed value); a bare string is kept as a string where the key expects one."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    path, raw = item.split("=", 1)
    node: Any = defaults
    for part in path.split("."):
        if isinstance(node, dict) and part not in node and path == OPEN_SECTION + part:
            node = None    # a model setting checked by w3model's ModelConfig
            break
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"--set {item!r}: unknown key {path!r}")
        node = node[part]
    expects_str = isinstance(node, str) or NULLABLE.get(path) is str
    try:
        value = _load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    if expects_str and value is not None and not isinstance(value, str):
        value = raw
    return path, value


def _nest(path: str, value: Any) -> dict:
    out: dict = {}
    node = out
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def get(cfg: dict, path: str) -> Any:
    """The value at a key path such as `data.crop_size`."""
    node: Any = cfg
    for part in path.split("."):
        node = node[part]
    return node


def _validate(cfg: RunConfig) -> None:
    """The trainer's own sections here; the loader's and the model's settings by their owners."""
    for path, allowed in CHOICES.items():
        if get(cfg, path) not in allowed:
            raise ConfigError(f"{cfg.label(path)}: {get(cfg, path)!r} is not one of "
                              f"{', '.join(map(str, allowed))}")
    for path in POSITIVE:
        if get(cfg, path) <= 0:
            raise ConfigError(f"{cfg.label(path)}: must be > 0, got {get(cfg, path)!r}")
    for path in NON_NEGATIVE:
        if get(cfg, path) < 0:
            raise ConfigError(f"{cfg.label(path)}: must be >= 0, got {get(cfg, path)!r}")
    model_config(cfg)      # the real heads come with the shards; ModelConfig checks them again then
    cfg.loaders = {role: _loader_settings(cfg, role) for role in LOADER_KEYS}
    _check_stage2(cfg)


def _check_stage2(cfg: RunConfig) -> None:
    """The mfr settings a stage-2 run needs (they are ignored by stage 1)."""
    mfr = cfg["mfr"]
    if cfg["train"]["objective"] != "mfr":
        return
    need = []
    if mfr["source"] == "cache" and not mfr["cache"]:
        need.append(("mfr.cache", "the teacher-cache folder (mfr.source is cache)"))
    if (mfr["source"] == "online" or mfr["init"] == "teacher") and not mfr["teacher"]:
        need.append(("mfr.teacher", "the stage-1 run or checkpoint folder of the teacher"))
    if mfr["source"] == "cache" and cfg["data"]["train_views"] < 1:
        need.append(("data.train_views", "a bank of V >= 1 views per clip: the cache holds those views"))
    if need:
        raise ConfigError(f"{cfg.label('train.objective')}: mfr needs " + "; ".join(
            f"{cfg.label(path)} ({why})" for path, why in need))


def model_config(cfg: RunConfig, heads: dict[str, int] | None = None) -> ModelConfig:
    """The model section as w3model's ModelConfig (num_segments from data.*, heads from the manifest)."""
    values = dict(cfg["model"], num_segments=cfg["data"]["num_segments"])
    labels = {key: cfg.label(f"model.{key}") for key in values}
    labels["num_segments"] = cfg.label("data.num_segments")
    if heads is not None:
        values["heads"] = dict(heads)
        labels["heads"] = "the shards' manifest heads"
    return ModelConfig.from_dict(values, labels=labels)


def _loader_settings(cfg: RunConfig, role: str) -> LoaderSettings:
    keys = {**{f: f"data.{f}" for f in DATA_LOADER_KEYS}, **LOADER_KEYS[role]}
    values = {field: get(cfg, path) if path else "train" for field, path in keys.items()}   # None: mode train
    labels = {field: cfg.label(path) for field, path in keys.items() if path}
    return LoaderSettings(**values, seed=cfg["seed"], labels=labels)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """defaults.yaml <- experiment YAML <- `--set` overrides, type-checked and validated."""
    defaults, _ = _read_yaml(DEFAULTS)
    values = copy.deepcopy(defaults)
    origins: dict[str, str] = {}
    if path is not None:
        experiment, lines = _read_yaml(Path(path))
        _merge(values, experiment, "", str(path), lines, origins)
    for item in overrides:
        key, value = _parse_override(item, defaults)
        _merge(values, _nest(key, value), "", "--set", {}, origins)
    cfg = RunConfig(values, origins, str(path) if path is not None else None)
    _validate(cfg)
    return cfg


def shards_dir(cfg: dict) -> Path:
    """<data.shards>/<data.dataset>; the loader checks it (a missing one names the command that makes it)."""
    return Path(cfg["data"]["shards"]) / cfg["data"]["dataset"]


def global_batch(cfg: dict, world_size: int) -> int:
    return cfg["train"]["batch_size"] * cfg["train"]["grad_accum"] * world_size


def scaled_lr(cfg: dict, world_size: int) -> float:
    """The TSM recipe: lr 0.01 per 64 clips, scaled linearly with the global batch."""
    return cfg["optim"]["lr_per_64"] * global_batch(cfg, world_size) / CLIPS_PER_BASE_LR


def dump_config(cfg: dict, path: Path) -> None:
    atomic_write(path, yaml.safe_dump(json.loads(json.dumps(cfg)), sort_keys=False))   # plain dicts for YAML
