"""The sample plan: orders and views are pure functions of recorded inputs, with the TSM protocols."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.plan import (MULTI_SCALES, fixed_crop_offsets, PlanItem, centre_box, default_flip, epoch_order, flip_label_map,
                           full_res_boxes, items_per_rank, make_view, multiscale_box, rank_items,
                           segment_indices, views_per_clip)

SIZES = [7, 5, 6, 7, 3, 6, 4]  # uneven shards, 38 clips


def _clips(items):
    return [(it.shard, it.index) for it in items]


def test_epoch_order_is_a_permutation_that_changes_with_epoch_and_seed():
    a = epoch_order(SIZES, seed=1, epoch=0, shuffle=True)
    assert sorted(map(tuple, a)) == [(s, i) for s, n in enumerate(SIZES) for i in range(n)]
    assert np.array_equal(a, epoch_order(SIZES, seed=1, epoch=0, shuffle=True))
    assert not np.array_equal(a, epoch_order(SIZES, seed=1, epoch=1, shuffle=True))
    assert not np.array_equal(a, epoch_order(SIZES, seed=2, epoch=0, shuffle=True))


def test_epoch_order_reads_a_window_of_shards_at_a_time():
    order = epoch_order(SIZES, seed=3, epoch=5, shuffle=True, window=2)
    shard_seq = [s for s, _ in order]
    first_seen = list(dict.fromkeys(shard_seq))
    for w in range(0, len(first_seen), 2):  # each window's samples form one contiguous run
        window = set(first_seen[w:w + 2])
        pos = [i for i, s in enumerate(shard_seq) if s in window]
        assert pos == list(range(pos[0], pos[0] + len(pos)))
    assert shard_seq != sorted(shard_seq)


def test_eval_order_is_storage_order():
    order = epoch_order(SIZES, seed=3, epoch=5, shuffle=False)
    assert [tuple(x) for x in order] == [(s, i) for s, n in enumerate(SIZES) for i in range(n)]


@pytest.mark.parametrize("world,batch", [(1, 4), (2, 4), (3, 5), (4, 1)])
def test_ranks_partition_train_epoch_into_equal_parts(world, batch):
    parts = [rank_items(SIZES, mode="train", seed=0, epoch=2, world_size=world, rank=r, batch_size=batch)
             for r in range(world)]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) % batch == 0
    assert len(parts[0]) == items_per_rank(sum(SIZES), mode="train", world_size=world, batch_size=batch)
    valid = [c for p in parts for c in _clips(it for it in p if it.valid)]
    assert sorted(valid) == sorted((s, i) for s, n in enumerate(SIZES) for i in range(n))  # disjoint, complete
    padding = [it for p in parts for it in p if not it.valid]
    assert len(padding) == len(parts[0]) * world - sum(SIZES)
    assert {it.view_id for p in parts for it in p} == {2}  # train view = epoch


def test_ranks_differ_between_epochs():
    e0 = rank_items(SIZES, mode="train", seed=0, epoch=0, world_size=2, rank=0, batch_size=4)
    e1 = rank_items(SIZES, mode="train", seed=0, epoch=1, world_size=2, rank=0, batch_size=4)
    assert _clips(e0) != _clips(e1)


def test_eval_counts_every_clip_once_and_test_has_six_views():
    for mode, nviews in (("val", 1), ("test", 6)):
        parts = [rank_items(SIZES, mode=mode, seed=0, epoch=3, world_size=3, rank=r, batch_size=4)
                 for r in range(3)]
        counted = Counter((it.shard, it.index, it.view_id) for p in parts for it in p if it.valid)
        assert set(counted.values()) == {1}
        assert len(counted) == sum(SIZES) * nviews
        assert {v for _, _, v in counted} == (set(range(nviews)) if mode == "test" else {0})
        assert parts[0][0] == PlanItem(0, 0, 0, True)


def test_plan_rejects_impossible_settings():
    with pytest.raises(ConfigError, match="rank"):
        rank_items(SIZES, mode="train", seed=0, epoch=0, world_size=2, rank=2, batch_size=4)
    with pytest.raises(ConfigError, match="mode"):
        views_per_clip("eval")
    with pytest.raises(ConfigError, match="batch_size"):
        rank_items(SIZES, mode="val", seed=0, epoch=0, world_size=1, rank=0, batch_size=0)
    with pytest.raises(ConfigError, match="shuffle_window"):
        rank_items(SIZES, mode="train", seed=0, epoch=0, world_size=1, rank=0, batch_size=4, window=0)


def test_segment_sampling_follows_tsn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = segment_indices(48, 8, "random", rng)
        assert np.all((idx >= np.arange(8) * 6) & (idx < np.arange(8) * 6 + 6))
    assert segment_indices(48, 8, "centres").tolist() == [3, 9, 15, 21, 27, 33, 39, 45]
    assert segment_indices(48, 8, "starts").tolist() == [0, 6, 12, 18, 24, 30, 36, 42]
    short = segment_indices(5, 8, "random", rng)  # fewer frames than segments: repeat, stay in range
    assert short.min() >= 0 and short.max() <= 4 and np.all(np.diff(short) >= 0)


def test_multiscale_crop_uses_tsm_scales_and_fixed_positions():
    rng = np.random.default_rng(1)
    w, h = 340, 256
    sizes = {int(256 * s) for s in MULTI_SCALES}  # 256, 224, 192, 168
    seen = set()
    for _ in range(400):
        x, y, cw, ch = multiscale_box(w, h, 224, rng)
        assert cw in sizes and ch in sizes and x + cw <= w and y + ch <= h
        assert abs(sorted(sizes).index(cw) - sorted(sizes).index(ch)) <= 1  # max_distort = 1
        assert (x, y) in fixed_crop_offsets(w, h, cw, ch)
        seen.add((cw, ch))
    assert len(seen) == 10  # all (w, h) pairs within one scale step of each other


def test_centre_and_full_resolution_boxes():
    assert centre_box(340, 256, 224, 256) == (58, 16, 224, 224)
    assert centre_box(170, 128, 224, 256) == (29, 8, 112, 112)  # same framing at half resolution
    assert full_res_boxes(340, 256) == [(0, 0, 256, 256), (42, 0, 256, 256), (84, 0, 256, 256)]
    assert full_res_boxes(256, 300) == [(0, 0, 256, 256), (0, 22, 256, 256), (0, 44, 256, 256)]


def test_views_are_pure_functions_of_seed_key_and_view_id():
    args = dict(num_frames=48, width=340, height=256, num_segments=8, crop_size=224, scale_size=256, flip=True)
    a = make_view(mode="train", seed=0, key="clip_1", view_id=3, **args)
    b = make_view(mode="train", seed=0, key="clip_1", view_id=3, **args)
    assert np.array_equal(a.frame_indices, b.frame_indices) and a.box == b.box and a.flip == b.flip
    others = [make_view(mode="train", seed=0, key="clip_1", view_id=v, **args) for v in range(4, 24)]
    assert any(o.box != a.box or not np.array_equal(o.frame_indices, a.frame_indices) for o in others)
    assert {o.flip for o in others} == {True, False}
    no_flip = [make_view(mode="train", seed=0, key="clip_1", view_id=v, **{**args, "flip": False})
               for v in range(20)]
    assert not any(v.flip for v in no_flip)


def test_test_views_are_two_clips_by_three_crops():
    args = dict(mode="test", seed=0, key="k", num_frames=48, width=340, height=256, num_segments=8,
                crop_size=224, scale_size=256, flip=False)
    views = [make_view(view_id=v, **args) for v in range(6)]
    assert [v.frame_indices[0] for v in views] == [3, 3, 3, 0, 0, 0]
    assert [v.box[0] for v in views] == [0, 42, 84, 0, 42, 84]
    assert {v.out_size for v in views} == {(256, 256)}
    with pytest.raises(ConfigError):
        make_view(view_id=6, **args)


def test_flip_map_from_real_class_names(real_annotations):
    names = list(json.loads((real_annotations / "sthv2/20bn_names/something-something-v2-labels.json"
                             ).read_text()))
    m = flip_label_map(names)
    assert np.array_equal(m[m], np.arange(len(names)))  # an involution
    ix = {n: i for i, n in enumerate(names)}
    assert m[ix["Pushing something from left to right"]] == ix["Pushing something from right to left"]
    assert m[ix["Turning the camera left while filming something"]] == ix["Turning the camera right while filming something"]
    assert m[ix["Plugging something into something but pulling it right out as you remove your hand"]] == \
        ix["Plugging something into something but pulling it right out as you remove your hand"]
    assert int((m != np.arange(len(names))).sum()) == 6
    ego = [line.split(" ", 1)[1].strip() for line in (real_annotations / "egogesture/third_party_Real-time-GesRec"
           / "annotation_EgoGesture/classIndAll.txt").read_text().splitlines() if line.strip()]
    em = flip_label_map(ego)
    eix = {n: i for i, n in enumerate(ego)}
    assert em[eix["Rotate_fists_clockwise"]] == eix["Rotate_fists_counterclockwise"]
    assert em[eix["Move_fingers_left"]] == eix["Move_fingers_right"]


def test_flip_defaults_per_dataset():
    assert default_flip("epic100") and default_flip("epic55")
    assert not default_flip("sthv2") and not default_flip("egogesture")
