"""Stage 2's setup (`train.objective: mfr`, docs/ARCHITECTURE.md §5): where the student starts
(`mfr.init`) and where the teacher's features come from (`mfr.source`), checked against the run before the
first step. Stage 1 passes through unchanged.
"""
from __future__ import annotations

import dataclasses

import torch
from accelerate import Accelerator

from pipeline.errors import ConfigError, ResourceError
from train.cache_build import Teacher, feature_shape, manifest_sha256, view_identity
from train.teacher_cache import open_cache
from train.teacher_features import CachedTeacher, OnlineTeacher


def is_stage2(cfg: dict) -> bool:
    return cfg["train"]["objective"] == "mfr"


def student_config(cfg: dict, config):
    """`mfr.init: scratch` starts from random weights whatever model.pretrained says."""
    if is_stage2(cfg) and cfg["mfr"]["init"] == "scratch":
        return dataclasses.replace(config, pretrained=None)
    return config


def initial_weights(cfg: dict) -> dict | None:
    """`mfr.init: teacher`: the teacher's weights (the only time a cache-fed run opens the teacher)."""
    if not (is_stage2(cfg) and cfg["mfr"]["init"] == "teacher"):
        return None
    from train.export import load_trained
    with torch.random.fork_rng():       # building the teacher must not move the student's random stream
        model, _, _ = load_trained(cfg["mfr"]["teacher"])
    return model.state_dict()


def build_command(cfg) -> str:
    exp = getattr(cfg, "path", None) or "<the stage-2 config>"
    return f"python train/teacher_cache.py build --cfg {exp}"


def _check_shape(cfg, student: tuple, teacher: tuple, where: str) -> None:
    if tuple(student) != tuple(teacher):
        raise ConfigError(f"{cfg.label('model.arch')}: the student's refined features are {tuple(student)}, "
                          f"{where} {tuple(teacher)}: MFR compares them element by element (use the teacher's "
                          f"architecture, depth, data.num_segments and data.crop_size)")


def cached_teacher(cfg, accelerator: Accelerator, loader, student) -> CachedTeacher:
    """The cache, complete and built for exactly this run's views (every differing field named)."""
    root = cfg["mfr"]["cache"]
    try:
        cache = open_cache(root)
    except ResourceError as err:
        raise ResourceError(f"{cfg.label('mfr.cache')}: {err}. Build it first: {build_command(cfg)}") from None
    missing = cache.missing_parts()
    if missing:
        raise ResourceError(f"{cfg.label('mfr.cache')}: teacher cache {root} is incomplete ({len(missing)} of "
                            f"{len(cache.parts)} parts missing, first {missing[0]}); finish it: {build_command(cfg)}")
    settings = loader.settings
    shape = feature_shape(student, settings.crop_size)
    _check_shape(cfg, shape, tuple(cache.layout.shape), f"the cache {root} holds")
    wanted = {"teacher_sha256": cache.identity.get("teacher_sha256"),   # not comparable: the teacher stays closed
              **view_identity(settings, settings.flip, manifest_sha256(loader.shards.root), shape,
                              cfg["mfr"]["cache_dtype"])}
    cache.check_identity(wanted, getattr(cfg, "path", None) or "this run's config")
    return CachedTeacher(cache, loader, loader_device(accelerator), skip_bad=settings.bad_sample == "skip")


def online_teacher(cfg, accelerator: Accelerator, loader, student) -> OnlineTeacher:
    teacher = Teacher(cfg["mfr"]["teacher"], accelerator.device)
    _check_shape(cfg, feature_shape(student, loader.settings.crop_size),
                 feature_shape(teacher.config, loader.settings.crop_size), f"the teacher {teacher.checkpoint} gives")
    return OnlineTeacher(teacher.model, accelerator.autocast)


def teacher_source(cfg, accelerator: Accelerator, loader, student):
    """None in stage 1; else what puts the teacher's features into each training batch."""
    if not is_stage2(cfg):
        return None
    with torch.random.fork_rng():       # the teacher's setup leaves the student's initialisation as it was
        if cfg["mfr"]["source"] == "cache":
            return cached_teacher(cfg, accelerator, loader, student)
        return online_teacher(cfg, accelerator, loader, student)


def loader_device(accelerator: Accelerator) -> torch.device:
    return accelerator.device if accelerator.device.type == "cuda" else torch.device("cpu")
