"""The sample plan: everything random in data loading as a pure function of recorded inputs.

Two functions carry the contract (docs/ARCHITECTURE.md §2, the sample plan):

* ``rank_items(shard_sizes, mode, seed, epoch, world_size, rank, batch_size)`` -> this rank's items for the
  epoch, in order. Ranks get disjoint, equal-sized, contiguous parts of one global order; the order shuffles
  shards, then samples within a window of consecutive shards, so each rank reads few shards at a time. Batch
  ``step`` is ``items[step * B:(step + 1) * B]``, so ``(epoch, step)`` is a complete resume position.
* ``make_view(mode, seed, key, view_id, clip geometry, ...)`` -> frame indices, crop box and flip, following
  the TSM reference (TSN segments; multi-scale crop; centre crop; 2 clips x 3 full-resolution crops).

Train items use ``view_id = epoch`` (a fresh view each epoch), or with a bank of V views per clip
(``data.train_views``) ``bank_view(seed, key, epoch, V)``, so that the teacher cache can hold every view a
student will see; val uses view 0; test enumerates views ``clip * 3 + crop`` for clip in (centres, starts).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.errors import ConfigError

MODES = ("train", "val", "test")
MULTI_SCALES = (1.0, 0.875, 0.75, 0.66)  # TSM GroupMultiScaleCrop, fractions of the short side
TEST_CLIPS = ("centres", "starts")  # TSM --twice_sample
TEST_CROPS = 3  # TSM --full_res --test_crops 3: crops of scale_size along the long side
DEFAULT_SHUFFLE_WINDOW = 4  # shards whose samples are mixed together
# Bumped whenever a view's frames, crop or flip for given (seed, key, view id) change: caches of teacher
# features record it and are refused by a plan of another version.
PLAN_VERSION = 1


@dataclass(frozen=True)
class PlanItem:
    """One sample slot of an epoch: which stored clip, which view of it, and whether it counts."""

    shard: int
    index: int  # position of the sample inside its shard
    view_id: int
    valid: bool  # False for padding (a repeat that evaluation must not count twice)


@dataclass(frozen=True)
class View:
    """How to cut one clip: frames to decode, a box in source pixels to resize, and a mirror flag."""

    frame_indices: np.ndarray  # int32 (T,), 0-based in decode order
    box: tuple[int, int, int, int]  # x, y, w, h in source pixels
    out_size: tuple[int, int]  # (height, width) after resizing the box
    flip: bool


def check_mode(mode: str, label: str = "mode") -> None:
    """``label``: what the caller's user calls the setting (``eval.mode``, ``--mode``), for the message."""
    if mode not in MODES:
        raise ConfigError(f"{label}: {mode!r} is not one of {', '.join(MODES)}")


def check_window(window: int, label: str = "shuffle_window") -> None:
    if window < 1:
        raise ConfigError(f"{label}: must be >= 1, got {window}")


def views_per_clip(mode: str) -> int:
    check_mode(mode)
    return len(TEST_CLIPS) * TEST_CROPS if mode == "test" else 1


# ----------------------------------------------------------------------------------------------- order


def epoch_order(shard_sizes: Sequence[int], *, seed: int, epoch: int, shuffle: bool,
                window: int = DEFAULT_SHUFFLE_WINDOW) -> np.ndarray:
    """Global order of (shard, index) pairs: shards permuted, then samples mixed within ``window`` shards."""
    check_window(window)
    shards = np.arange(len(shard_sizes))
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x5EED]))
    if shuffle:
        shards = rng.permutation(shards)
    parts = []
    for start in range(0, len(shards), window):
        block = np.concatenate(
            [np.stack([np.full(shard_sizes[s], s), np.arange(shard_sizes[s])], axis=1) for s in
             shards[start:start + window]] or [np.zeros((0, 2), np.int64)])
        parts.append(block[rng.permutation(len(block))] if shuffle else block)
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 2), np.int64)


def items_per_rank(num_clips: int, *, mode: str, world_size: int, batch_size: int) -> int:
    """Every rank gets the same number of whole batches; the global order is padded up to it."""
    total = num_clips * views_per_clip(mode)
    per_step = world_size * batch_size
    return -(-total // per_step) * batch_size


def check_partition(*, world_size: int, rank: int, batch_size: int = 1) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank/world_size: need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if batch_size < 1:
        raise ConfigError(f"batch_size: must be >= 1, got {batch_size}")


def rank_items(shard_sizes: Sequence[int], *, mode: str, seed: int, epoch: int, world_size: int, rank: int,
               batch_size: int, window: int = DEFAULT_SHUFFLE_WINDOW) -> list[PlanItem]:
    """This rank's items for ``epoch``: a contiguous part of the padded global order."""
    check_mode(mode)
    check_partition(world_size=world_size, rank=rank, batch_size=batch_size)
    order = epoch_order(shard_sizes, seed=seed, epoch=epoch, shuffle=mode == "train", window=window)
    if len(order) == 0:
        return []
    nviews = views_per_clip(mode)
    view_ids = np.arange(nviews) if mode == "test" else np.array([epoch if mode == "train" else 0])
    clips = np.repeat(order, len(view_ids), axis=0)
    views = np.tile(view_ids, len(order))
    per_rank = items_per_rank(len(order), mode=mode, world_size=world_size, batch_size=batch_size)
    pick = np.arange(rank * per_rank, (rank + 1) * per_rank)
    real = len(clips)
    return [PlanItem(int(clips[i % real, 0]), int(clips[i % real, 1]), int(views[i % real]), bool(i < real))
            for i in pick]


# ----------------------------------------------------------------------------------------------- views


def bank_view(seed: int, key: str, epoch: int, views: int) -> int:
    """The view of training clip ``key`` in ``epoch`` with a bank of ``views`` views: ``(offset + epoch) mod
    views``, the offset a hash of (seed, key). Every block of ``views`` epochs shows each view once, and the
    clips are out of step with each other."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") + epoch) % views


def clip_rng(seed: int, key: str, view_id: int) -> np.random.Generator:
    """Random stream of one view of one clip; stable across processes and Python versions."""
    key_hash = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng(np.random.SeedSequence([seed, key_hash, view_id]))


def segment_indices(num_frames: int, num_segments: int, how: str, rng: np.random.Generator | None = None
                    ) -> np.ndarray:
    """TSN sampling: T equal segments; a random frame in each (train), their centres or their starts."""
    if num_frames < 1:
        raise ConfigError(f"num_frames: a clip needs at least one frame, got {num_frames}")
    tick = num_frames / num_segments
    if how == "random" and num_frames >= num_segments:
        avg = num_frames // num_segments
        assert rng is not None
        idx = np.arange(num_segments) * avg + rng.integers(0, avg, size=num_segments)
    elif how in ("random", "centres"):  # clips shorter than T repeat frames, like TSM's val sampling
        idx = (tick / 2.0 + tick * np.arange(num_segments)).astype(np.int64)
    elif how == "starts":
        idx = (tick * np.arange(num_segments)).astype(np.int64)
    else:
        raise ConfigError(f"segment sampling {how!r}: expected random, centres or starts")
    return np.clip(idx, 0, num_frames - 1).astype(np.int32)


def fixed_crop_offsets(width: int, height: int, crop_w: int, crop_h: int) -> list[tuple[int, int]]:
    """TSM's 13 fixed crop positions (corners, centre, edge middles, quarter points)."""
    ws, hs = (width - crop_w) // 4, (height - crop_h) // 4
    return [(0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs),
            (0, 2 * hs), (4 * ws, 2 * hs), (2 * ws, 4 * hs), (2 * ws, 0),
            (ws, hs), (3 * ws, hs), (ws, 3 * hs), (3 * ws, 3 * hs)]


def multiscale_box(width: int, height: int, crop_size: int, rng: np.random.Generator
                   ) -> tuple[int, int, int, int]:
    """TSM GroupMultiScaleCrop (fix_crop, more_fix_crop, max_distort=1) as a box in source pixels."""
    sizes = [int(min(width, height) * s) for s in MULTI_SCALES]
    sizes = [crop_size if abs(s - crop_size) < 3 else s for s in sizes]
    pairs = [(w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= 1]
    crop_w, crop_h = pairs[rng.integers(len(pairs))]
    crop_w, crop_h = min(crop_w, width), min(crop_h, height)
    offsets = fixed_crop_offsets(width, height, crop_w, crop_h)
    x, y = offsets[rng.integers(len(offsets))]
    return int(x), int(y), int(crop_w), int(crop_h)


def centre_box(width: int, height: int, crop_size: int, scale_size: int) -> tuple[int, int, int, int]:
    """Scale the short side to ``scale_size``, then centre-crop ``crop_size``: the same box in source pixels."""
    side = min(round(crop_size * min(width, height) / scale_size), width, height)
    return (width - side) // 2, (height - side) // 2, side, side


def full_res_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """TSM GroupFullResSample without flip: three short-side squares at the start, centre and end."""
    side = min(width, height)
    if width >= height:
        return [(x, 0, side, side) for x in (0, (width - side) // 2, width - side)]
    return [(0, y, side, side) for y in (0, (height - side) // 2, height - side)]


def make_view(*, mode: str, seed: int, key: str, view_id: int, num_frames: int, width: int, height: int,
              num_segments: int, crop_size: int, scale_size: int, flip: bool) -> View:
    """The view ``view_id`` of clip ``key``; ``flip`` enables random mirroring (training only). ``mode`` is
    one of MODES (checked once with the loader's settings, not per sample)."""
    rng = clip_rng(seed, key, view_id)
    if mode == "train":
        frames = segment_indices(num_frames, num_segments, "random", rng)
        box = multiscale_box(width, height, crop_size, rng)
        return View(frames, box, (crop_size, crop_size), bool(flip and rng.random() < 0.5))
    if mode == "val":
        frames = segment_indices(num_frames, num_segments, "centres")
        return View(frames, centre_box(width, height, crop_size, scale_size), (crop_size, crop_size), False)
    if not 0 <= view_id < views_per_clip("test"):
        raise ConfigError(f"view_id {view_id}: test mode has views 0..{views_per_clip('test') - 1}")
    clip, crop = divmod(view_id, TEST_CROPS)
    frames = segment_indices(num_frames, num_segments, TEST_CLIPS[clip])
    return View(frames, full_res_boxes(width, height)[crop], (scale_size, scale_size), False)


# ----------------------------------------------------------------------------------------------- flip

_MIRROR_WORDS = {"left": "right", "right": "left", "clockwise": "counterclockwise",
                 "counterclockwise": "clockwise", "anticlockwise": "clockwise"}


def flip_label_map(class_names: Sequence[str]) -> np.ndarray:
    """Label permutation for a mirrored clip: "...left to right" <-> "...right to left", clockwise <-> counter.

    A class whose mirrored name is not a class (e.g. "pulling it right out") is taken as unaffected.
    """
    lookup = {name.lower(): i for i, name in enumerate(class_names)}
    mapping = np.arange(len(class_names))
    for i, name in enumerate(class_names):
        parts = re.split(r"([^A-Za-z]+)", name.lower())
        mirrored = "".join(_MIRROR_WORDS.get(p, p) for p in parts)
        if mirrored != name.lower() and mirrored in lookup:
            mapping[i] = lookup[mirrored]
    return mapping


def default_flip(dataset: str) -> bool:
    """Mirroring changes the meaning of left/right classes (Something-Something, EgoGesture); not EPIC's."""
    return dataset.startswith("epic")
