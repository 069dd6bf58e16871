"""A loader's settings, checked here and nowhere else.

Whoever builds a loader (the trainer, peek, a benchmark, a notebook) gets the same checks. Errors name a
setting by its *label*: the keyword argument by default, or whatever the caller says it is called where the
user wrote it. The trainer passes labels such as ``launch/sthv2.yaml:9: data.crop_size`` or
``--set train.batch_size``; peek passes its command-line flags.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline.errors import ConfigError
from pipeline.plan import DEFAULT_SHUFFLE_WINDOW, check_mode, check_window

BACKENDS = ("dali", "reference")
BAD_SAMPLE_POLICIES = ("raise", "skip")
_CHOICES = {"backend": BACKENDS, "bad_sample": BAD_SAMPLE_POLICIES}
_AT_LEAST_ONE = ("batch_size", "num_segments", "crop_size", "scale_size", "num_threads")
# The settings that decide which batches a loader yields (with world size and rank): recorded in a
# loader's state and compared on resume. Backend, threads, bad-sample policy and timeout may change.
PLAN_FIELDS = ("split", "mode", "batch_size", "num_segments", "crop_size", "scale_size", "seed", "flip",
               "shuffle_window", "train_views")


@dataclass(frozen=True)
class LoaderSettings:
    """``flip=None``: the dataset's default (on for EPIC, off where classes name left/right).
    ``timeout_s`` bounds the wait for one batch, so a stuck worker is an error rather than a hang."""

    split: str = "train"
    mode: str = "train"           # train | val | test (test = the multi-view protocol)
    batch_size: int = 8
    num_segments: int = 8
    crop_size: int = 224
    scale_size: int = 256
    seed: int = 0
    backend: str = "dali"
    num_threads: int = 2
    py_workers: int = 0           # DALI: processes reading samples (parallel external source); 0 = its own thread
    bad_sample: str = "raise"
    flip: bool | None = None
    shuffle_window: int = DEFAULT_SHUFFLE_WINDOW
    train_views: int = 0          # 0: view id = epoch; V: a bank of V views per clip (pipeline.plan.bank_view)
    timeout_s: float = 300.0
    labels: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def label(self, name: str) -> str:
        """How the user calls setting ``name`` where they wrote it (for messages)."""
        return self.labels.get(name, name)

    def __post_init__(self) -> None:
        name = self.label
        for key in (*_AT_LEAST_ONE, "seed", "shuffle_window", "train_views", "py_workers"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{name(key)}: expected an integer, got {value!r}")
        for key in _AT_LEAST_ONE:
            if getattr(self, key) < 1:
                raise ConfigError(f"{name(key)}: must be >= 1, got {getattr(self, key)}")
        if self.py_workers < 0:
            raise ConfigError(f"{name('py_workers')}: must be >= 0 (0 = samples read on the loader's own thread), "
                              f"got {self.py_workers}")
        if self.train_views < 0:
            raise ConfigError(f"{name('train_views')}: must be >= 0 (0 = a fresh view every epoch), got "
                              f"{self.train_views}")
        check_mode(self.mode, name("mode"))           # the plan owns its modes and its shuffle window
        check_window(self.shuffle_window, name("shuffle_window"))
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{name(key)}: {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if self.crop_size > self.scale_size:
            raise ConfigError(f"{name('crop_size')} ({self.crop_size}) must not exceed {name('scale_size')} "
                              f"({self.scale_size}): crops are cut from clips scaled to scale_size")
        if not isinstance(self.split, str) or not self.split:
            raise ConfigError(f"{name('split')}: expected a split name such as train, val or test, "
                              f"got {self.split!r}")
        if not (isinstance(self.timeout_s, (int, float)) and math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ConfigError(f"{name('timeout_s')}: must be a positive number of seconds, got {self.timeout_s!r}")

    def plan(self) -> dict:
        """The settings that decide the batches (``PLAN_FIELDS``)."""
        return {key: getattr(self, key) for key in PLAN_FIELDS}

