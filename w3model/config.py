"""The model's settings: one typed record, filled from the ``model:`` section of a run's YAML.

Every field is a plain YAML value, so an experiment file can set any of them and the trainer passes the
section through unchanged. Unknown keys, wrong types and impossible values raise ``ConfigError`` naming
the key path (``model.<key>``), because a silently ignored typo in an ablation config costs a GPU-week.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from typing import Any, Literal

from pipeline.errors import ConfigError

Arch = Literal["tsn", "tsm", "tsm_cbam", "tsm_nl", "tsm_w3"]
ARCHS: tuple[str, ...] = typing.get_args(Arch)
DEPTHS = (18, 34, 50, 101)
# The architectures whose blocks produce spatial attention maps, which AFR (Eq. 7-8) consumes.
ARCHS_WITH_SPATIAL_MAPS = ("tsm_cbam", "tsm_w3")


@dataclass(frozen=True)
class ModelConfig:
    """Settings of :func:`w3model.build_model`; the defaults are the paper's TSM+W3 ResNet-50.

    Temporal shift (TSM reference): ``shift_div`` 8 (1/8 of channels from t+1, 1/8 from t-1),
    ``shift_place`` ``blockres`` (residual branch only) or ``block`` (block input, both branches),
    ``shift_stages`` which of layer1..layer4 shift.

    W3 (paper 3.1-3.2) fills the paper's silent points as follows; each choice is argued in
    ``w3model/w3.py``:

    - ``w3_reduction`` r of the shared channel MLP (paper: 16).
    - ``w3_temporal_kernel`` of the two 1D temporal convs and the 3D convs (paper: 3).
    - ``w3_channel_temporal``: ``per_channel`` (depthwise 1D convs, the paper's "per-channel temporal
      relationships") or ``full`` (C->C/r->C 1D convs mixing channels).
    - ``w3_spatial_hidden``: channels between the two 3x3x3 convs of the spatio-temporal sub-net.
    - ``w3_norm``: ``batch`` (BatchNorm after every attention conv that feeds another layer) or ``none``.
    - ``w3_position``: ``residual`` (on the residual branch before the identity is added, as CBAM and SE
      do) or ``output`` (on the block output).
    - ``attention_init``: ``identity`` (masks are 2*sigmoid with a small-initialised last layer, so every
      mask starts at ~1 and the pretrained network is unchanged at step 0) or ``paper`` (plain sigmoid
      masks, PyTorch default initialisation).
    - ``attention_stages``: which of layer1..layer4 get W3/CBAM blocks (paper: all).

    - ``w3_spatial`` / ``w3_temporal``: the ablation switches of Table 5. ``w3_spatial: false`` ("w/o
      SA") drops the spatio-temporal mask Ms (Eq. 5-6) and with it AFR, which refines with Ms;
      ``w3_temporal: false`` ("w/o TA") drops both video-level temporal networks (Eq. 4 and 6), so the
      frame-level gates of Eq. 3 and 5 are the masks (CBAM's gates, started as CBAM starts them).

    AFR (paper 3.4): ``afr`` on/off (``None`` = on for ``tsm_w3`` with ``w3_spatial``, off otherwise;
    ``false`` is Table 5's "w/o AFR"), ``afr_source`` ``mean`` (each stage's map = mean of its blocks'
    maps: every attention module gets the shortcut the paper argues for) or ``last`` (the stage's last
    block only). ``afr_init``: ``default`` (PyTorch's initialisation of the 1x1 conv) or ``small`` (x0.01,
    so y starts within ~1 % of x; it also shrinks the gradient the shortcut carries to the masks 100x).
    ``afr_loss_weight``: the stage-1 "AFR loss" of 3.4, read as deep supervision: w times the
    cross-entropy of the same heads on the unrefined features x, added to the cross-entropy on y
    (``train.objectives.Classification``; 0 = off; needs AFR).

    ``fc_lr5``: the TSM optimiser policy's 5x / 10x learning rate for the new classifier's weight / bias
    (TSM's own switch, which its training script turns off when fine-tuning from the same dataset); off,
    the classifier follows the trunk's rules. From scratch, x5 on a classifier over still-random features
    throws the loss far above chance in the first steps (the order-only benchmark turns it off).

    ``pretrained``: ``null`` (from scratch), ``imagenet`` (torchvision's ImageNet weights of the
    model's depth through torch.hub's cache, see :mod:`w3model.pretrained`) or a path to such a file.

    Non-local (``tsm_nl``): blocks after every ``nl_every``-th residual block of ``nl_stages`` starting
    with the first, i.e. 2 in res3 and 3 in res4 for ResNet-50 as in the NL and TSM papers.
    """

    arch: Arch = "tsm_w3"
    depth: int = 50
    num_segments: int = 8
    heads: dict[str, int] = field(default_factory=lambda: {"label": 174})
    dropout: float = 0.5
    fc_lr5: bool = True
    pretrained: str | None = None
    shift_div: int = 8
    shift_place: Literal["blockres", "block"] = "blockres"
    shift_stages: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    attention_stages: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    attention_init: Literal["identity", "paper"] = "identity"
    w3_reduction: int = 16
    w3_temporal_kernel: int = 3
    w3_channel_temporal: Literal["per_channel", "full"] = "per_channel"
    w3_spatial_hidden: int = 96
    w3_norm: Literal["batch", "none"] = "batch"
    w3_position: Literal["residual", "output"] = "residual"
    w3_spatial: bool = True
    w3_temporal: bool = True
    afr: bool | None = None
    afr_source: Literal["mean", "last"] = "mean"
    afr_init: Literal["default", "small"] = "small"
    afr_loss_weight: float = 0.0
    nl_stages: list[int] = field(default_factory=lambda: [2, 3])
    nl_every: int = 2

    # How the user calls each setting where they wrote it, for messages (default ``model.<field>``); the
    # trainer passes e.g. {"depth": "launch/sthv2.yaml:12: model.depth", "num_segments": "data.num_segments"}.
    labels: InitVar[Mapping[str, str] | None] = None

    def __post_init__(self, labels: Mapping[str, str] | None) -> None:
        self._validate(lambda key: (labels or {}).get(key, f"model.{key}"))

    @classmethod
    def from_dict(cls, values: dict[str, Any], labels: Mapping[str, str] | None = None) -> "ModelConfig":
        """Check every key and type against the fields, then the values (once, in ``__post_init__``)."""
        def name(key: str) -> str:
            return (labels or {}).get(key, f"model.{key}")

        if not isinstance(values, dict):
            raise ConfigError(f"model: expected a mapping of model settings, got {type(values).__name__}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(
                f"{name(unknown[0])}: unknown model setting"
                + (f" (also unknown: {', '.join(unknown[1:])})" if unknown[1:] else "")
                + f"; known settings: {', '.join(names)}"
            )
        for key, value in values.items():
            _check_type(value, hints[key], name(key))
        return cls(**values, labels=labels)

    def _validate(self, name) -> None:
        """Values that have the right type but cannot build a model."""
        if self.arch not in ARCHS:
            raise ConfigError(f"{name('arch')}: {self.arch!r} is not one of {', '.join(ARCHS)}")
        if self.depth not in DEPTHS:
            raise ConfigError(f"{name('depth')}: {self.depth} is not one of {DEPTHS}")
        if self.num_segments < 1:
            raise ConfigError(f"{name('num_segments')}: must be >= 1, got {self.num_segments}")
        if not self.heads:
            raise ConfigError(f"{name('heads')}: give at least one head, e.g. {{label: 174}}")
        for head, classes in self.heads.items():
            if not head.isidentifier():
                raise ConfigError(f"{name('heads')}.{head}: head names must be identifiers (used as module names)")
            if classes < 1:
                raise ConfigError(f"{name('heads')}.{head}: class count must be >= 1, got {classes}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name(f.name)}: expected a finite number, got {value}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{name('dropout')}: must be in [0, 1), got {self.dropout}")
        for key in ("shift_div", "w3_reduction", "w3_spatial_hidden", "nl_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{name(key)}: must be >= 1, got {getattr(self, key)}")
        if self.w3_temporal_kernel < 1 or self.w3_temporal_kernel % 2 == 0:
            raise ConfigError(f"{name('w3_temporal_kernel')}: must be odd and >= 1 (same-length output), "
                              f"got {self.w3_temporal_kernel}")
        for key in ("shift_stages", "attention_stages", "nl_stages"):
            stages = getattr(self, key)
            bad = [s for s in stages if s not in (1, 2, 3, 4)]
            if bad or len(set(stages)) != len(stages):
                raise ConfigError(f"{name(key)}: stages are distinct numbers among 1..4 (layer1..layer4), "
                                  f"got {stages}")
        for key in ("w3_spatial", "w3_temporal"):
            if not getattr(self, key) and self.arch != "tsm_w3":
                raise ConfigError(f"{name(key)}: removes a part of W3; arch {self.arch!r} has no W3 (use tsm_w3)")
        if self.afr and self.arch not in ARCHS_WITH_SPATIAL_MAPS:
            raise ConfigError(f"{name('afr')}: AFR refines features with spatial attention maps; arch "
                              f"{self.arch!r} has none (use one of {', '.join(ARCHS_WITH_SPATIAL_MAPS)})")
        if self.afr and not self.w3_spatial:
            raise ConfigError(f"{name('afr')}: AFR refines features with the spatial masks, which "
                              f"{name('w3_spatial')}: false removes")
        if self.afr and not self.attention_stages:
            raise ConfigError(f"{name('afr')}: needs at least one stage in {name('attention_stages')}")
        if self.afr_loss_weight < 0:
            raise ConfigError(f"{name('afr_loss_weight')}: must be >= 0, got {self.afr_loss_weight}")
        if self.afr_loss_weight and not self.use_afr:
            raise ConfigError(f"{name('afr_loss_weight')}: the AFR loss supervises the features before AFR's "
                              f"refinement; this model has no AFR (arch {self.arch!r}, afr {self.afr})")
        if self.pretrained is not None and not self.pretrained.strip():
            raise ConfigError(f"{name('pretrained')}: give null, imagenet or a path to a torchvision ResNet "
                              f"state dict, not an empty string")

    @property
    def use_afr(self) -> bool:
        return self.arch == "tsm_w3" and self.w3_spatial if self.afr is None else self.afr

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_type(value: Any, hint: Any, path: str) -> None:
    """A small structural type check for the YAML-shaped hints used above."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                _check_type(value, option, path)
                return
            except ConfigError:
                continue
        raise ConfigError(f"{path}: expected {_describe(hint)}, got {value!r}")
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{path}: expected null, got {value!r}")
        return
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list of {_describe(args[0])}, got {value!r}")
        for i, item in enumerate(value):
            _check_type(item, args[0], f"{path}[{i}]")
        return
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        for key, item in value.items():
            _check_type(key, args[0], f"{path} (key {key!r})")
            _check_type(item, args[1], f"{path}.{key}")
        return
    # bool is an int in Python: refuse it where a number is meant, and ints where a bool is meant.
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise ConfigError(f"{path}: expected {_describe(hint)}, got {value!r} ({type(value).__name__})")


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if origin is list:
        return f"list of {_describe(typing.get_args(hint)[0])}"
    if origin is dict:
        return "mapping"
    if hint is type(None):
        return "null"
    return hint.__name__
