"""Run configuration: launch/defaults.yaml, one experiment YAML over it, then `--set a.b=v` overrides.

The defaults file is the schema (SlowFast style): a key that is not in it is unknown, and a value must have
the type of its default. Every error is a ConfigError that names the file, line and key path.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError, ResourceError
from w3model.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = REPO / "launch" / "defaults.yaml"

# Keys whose default is null: the type a non-null value must have.
NULLABLE = {"model.pretrained": str}
CHOICES = {
    "data.backend": ("dali", "reference"),
    "data.bad_sample": ("raise", "skip"),
    "optim.schedule": ("steps", "cosine"),
    "train.precision": ("bf16", "fp32"),
    "eval.mode": ("val", "test"),
}
POSITIVE = ("data.num_segments", "data.crop_size", "data.scale_size", "data.num_threads", "train.epochs",
            "train.batch_size", "train.grad_accum", "train.log_every", "eval.batch_size", "optim.lr_per_64")
NON_NEGATIVE = ("train.max_steps", "train.ckpt_every", "train.keep_checkpoints", "eval.every_epochs",
                "optim.weight_decay", "optim.clip_grad", "optim.warmup_epochs", "optim.momentum")
CLIPS_PER_BASE_LR = 64
# The model section is passed to w3model.build_model whole: defaults.yaml lists the common settings,
# any other w3model.config.ModelConfig field may be added and is checked by ModelConfig itself.
OPEN_SECTION = "model."
MODEL_KEYS_ELSEWHERE = {"num_segments": "set data.num_segments (the loader and the model share it)",
                        "heads": "the heads come from the shards' manifest.json, not the config"}


def _key_lines(text: str) -> dict[str, int]:
    """Key path -> 1-based line in a YAML text, so that errors can point at the line."""
    lines: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                path = f"{prefix}{key_node.value}"
                lines[path] = key_node.start_mark.line + 1
                walk(value_node, path + ".")

    root = yaml.compose(text)
    if root is not None:
        walk(root, "")
    return lines


def _read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    if not path.is_file():
        raise ResourceError(f"config file {path} not found (experiment configs live in launch/*.yaml)")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
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
    elif isinstance(default, list):
        ok = isinstance(value, list)
        if ok and default:
            value = [_check_type(f"{path}[{i}]", default[0], v, where) for i, v in enumerate(value)]
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{where}{path}: expected {_type_name(default)}, got {_type_name(value)} {value!r}")
    return value


def _merge(base: dict, override: dict, prefix: str, source: str, lines: dict[str, int]) -> None:
    for key, value in override.items():
        path = f"{prefix}{key}"
        where = f"{source}:{lines[path]}: " if path in lines else f"{source}: "
        if key not in base and prefix == OPEN_SECTION:
            if key in MODEL_KEYS_ELSEWHERE:
                raise ConfigError(f"{where}{path}: {MODEL_KEYS_ELSEWHERE[key]}")
            base[key] = value      # a model setting without a default here: w3model checks it below
            continue
        if key not in base:
            section = prefix.rstrip(".") or "the top level"
            known = ", ".join(sorted(base))
            raise ConfigError(f"{where}unknown key {path!r} (known keys in {section}: {known})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{path}: expected a mapping (a section), got {_type_name(value)}")
            _merge(base[key], value, path + ".", source, lines)
        else:
            base[key] = _check_type(path, base[key], value, where)


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
        value = yaml.safe_load(raw) if raw != "" else ""
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


def _validate(cfg: dict) -> None:
    def get(path: str) -> Any:
        node = cfg
        for part in path.split("."):
            node = node[part]
        return node

    for path, allowed in CHOICES.items():
        if get(path) not in allowed:
            raise ConfigError(f"{path}: {get(path)!r} is not one of {', '.join(map(str, allowed))}")
    for path in POSITIVE:
        if get(path) <= 0:
            raise ConfigError(f"{path}: must be > 0, got {get(path)!r}")
    for path in NON_NEGATIVE:
        if get(path) < 0:
            raise ConfigError(f"{path}: must be >= 0, got {get(path)!r}")
    if cfg["data"]["crop_size"] > cfg["data"]["scale_size"]:
        raise ConfigError(f"data.crop_size ({cfg['data']['crop_size']}) must not exceed data.scale_size "
                          f"({cfg['data']['scale_size']})")
    ModelConfig.from_dict(model_kwargs(cfg, heads=None))


def model_kwargs(cfg: dict, heads: dict[str, int] | None) -> dict:
    """The keyword arguments of w3model.build_model for this run (heads from the shards' manifest)."""
    kwargs = dict(cfg["model"], num_segments=cfg["data"]["num_segments"])
    if heads is not None:
        kwargs["heads"] = dict(heads)
    return kwargs


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """defaults.yaml <- experiment YAML <- `--set` overrides, type-checked and validated."""
    defaults, _ = _read_yaml(DEFAULTS)
    cfg = copy.deepcopy(defaults)
    if path is not None:
        experiment, lines = _read_yaml(Path(path))
        _merge(cfg, experiment, "", str(path), lines)
    for item in overrides:
        key, value = _parse_override(item, defaults)
        _merge(cfg, _nest(key, value), "", "--set", {})
    _validate(cfg)
    return cfg


def shards_dir(cfg: dict) -> Path:
    """<data.shards>/<data.dataset>; a missing one names the command that writes it."""
    root = Path(cfg["data"]["shards"]) / cfg["data"]["dataset"]
    if not (root / "manifest.json").is_file():
        raise ResourceError(
            f"no shards at {root} (missing {root / 'manifest.json'}; config keys data.shards / data.dataset). "
            f"Make them with: python pipeline/shard.py --dataset {cfg['data']['dataset']} --root <RAW_DIR> "
            f"--out {cfg['data']['shards']}")
    return root


def global_batch(cfg: dict, world_size: int) -> int:
    return cfg["train"]["batch_size"] * cfg["train"]["grad_accum"] * world_size


def scaled_lr(cfg: dict, world_size: int) -> float:
    """The TSM recipe: lr 0.01 per 64 clips, scaled linearly with the global batch."""
    return cfg["optim"]["lr_per_64"] * global_batch(cfg, world_size) / CLIPS_PER_BASE_LR


def dump_config(cfg: dict, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
