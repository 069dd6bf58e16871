"""synth.py: every dataset in its owners' layout (the parsers read it with no rejects), the label is in
the motion, and the same seed writes the same dataset; the order-only task's pair symmetry."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from helpers import read_dali
from pipeline.datasets import parse_dataset
from pipeline.errors import ConfigError
from pipeline.synth import (DIRECTIONS, MAX_MIRROR_FREE_CLASSES, ORDER_CLASSES, class_phrase, main as synth_main,
                            render_clip, render_order_clip, synthesize, synthesize_and_shard)

TINY = dict(classes=3, clips_per_class=4, num_frames=8, width=48, height=32)


def _centroids(clip: np.ndarray) -> np.ndarray:
    """Where the moving shape is in each frame: pixels far from the per-pixel median (the background)."""
    background = np.median(clip.astype(float), axis=0)
    out = []
    for frame in clip.astype(float):
        ys, xs = np.nonzero(np.abs(frame - background).sum(-1) > 60)
        out.append((xs.mean(), ys.mean()))
    return np.array(out)


@pytest.mark.parametrize("label", range(len(DIRECTIONS)))
def test_the_shape_moves_in_the_class_direction(label):
    clip = render_clip(label, 24, 96, 72, np.random.default_rng(label))
    track = _centroids(clip)
    dx, dy = track[-1] - track[0]
    angle = 2 * math.pi * label / len(DIRECTIONS)
    assert math.hypot(dx, dy) > 20
    assert (dx * math.cos(angle) + dy * math.sin(angle)) / math.hypot(dx, dy) > 0.9


def test_out_and_back_returns():
    track = _centroids(render_clip(len(DIRECTIONS), 25, 96, 72, np.random.default_rng(0)))
    assert np.abs(track[-1] - track[0]).max() < 3 and np.abs(track[12] - track[0]).max() > 20


def test_epic_classes_survive_a_horizontal_flip():
    """EPIC clips are mirrored by the loader: a synthetic EPIC verb must not depend on left vs right."""
    names = [class_phrase(c, mirror_free=True) for c in range(MAX_MIRROR_FREE_CLASSES)]
    assert len(set(names)) == len(names) and not any("left" in n or "right" in n for n in names)
    sideways = [_centroids(render_clip(0, 12, 96, 72, np.random.default_rng(s), mirror_free=True)) for s in range(8)]
    dx = [track[-1, 0] - track[0, 0] for track in sideways]
    assert min(dx) < -20 and max(dx) > 20                              # both ways within one class
    assert all(abs(track[-1, 1] - track[0, 1]) < 3 for track in sideways)


def test_appearance_does_not_give_the_label_away():
    a = render_clip(0, 4, 48, 32, np.random.default_rng(1))
    b = render_clip(0, 4, 48, 32, np.random.default_rng(2))
    assert np.abs(a[0].astype(int) - b[0].astype(int)).mean() > 20     # same class, different look


@pytest.mark.parametrize("dataset,splits", [("sthv1", 3), ("sthv2", 3), ("egogesture", 3), ("epic55", 2),
                                            ("epic100", 3)])
def test_layout_parses_without_rejects(tmp_path, dataset, splits):
    root = synthesize(dataset, tmp_path / dataset, **TINY)
    index = parse_dataset(dataset, root)
    assert index.rejects == [] and len(index.records) == splits
    assert sum(len(r) for r in index.records.values()) == 12
    train = index.records["train"]
    assert {r.labels["label"] if not dataset.startswith("epic") else r.labels["verb"] for r in train} == {0, 1, 2}
    assert all(r.source.exists() for recs in index.records.values() for r in recs)


def test_epic_layout_details(tmp_path):
    root = synthesize("epic100", tmp_path / "e", rgb_frames=True, **TINY)
    assert (root / "P01/videos/P01_101.MP4").is_file()
    assert (root / "P01/rgb_frames/P01_01/frame_0000000001.jpg").is_file()
    header = (root / "EPIC_100_test_timestamps.csv").read_text().splitlines()[0]
    assert "verb_class" not in header and "narration" not in header.replace("narration_id", "").replace(
        "narration_timestamp", "")
    rows = (root / "EPIC_100_train.csv").read_text().splitlines()[1:]
    narration_ts = [r.split(",")[3] for r in rows]
    assert "" in narration_ts and any(len(t) == len("00:00:00.000") for t in narration_ts)   # some empty
    info = (root / "EPIC_100_video_info.csv").read_text().splitlines()
    assert info[0] == "video_id,duration,fps,resolution" and any(",50.0," in line for line in info)
    root55 = synthesize("epic55", tmp_path / "e55", **TINY)
    assert (root55 / "EPIC_video_info.csv").read_text().startswith("video,resolution,duration,fps")
    assert (root55 / "videos/test/P01/P01_11.MP4").is_file()


def test_same_seed_same_files(tmp_path):
    a = synthesize("sthv1", tmp_path / "a", **TINY)
    b = synthesize("sthv1", tmp_path / "b", **TINY)
    c = synthesize("sthv1", tmp_path / "c", **{**TINY, "seed": 1})
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if f.suffix == ".jpg")


def test_cli_and_errors(tmp_path, capsys):
    assert synth_main(["--dataset", "sthv2", "--out", str(tmp_path / "s"), "--classes", "2",
                       "--clips-per-class", "1", "--num-frames", "4", "--width", "32", "--height", "32"]) == 0
    assert (tmp_path / "s/labels/something-something-v2-labels.json").read_bytes().count(b"\r\n") == 4
    assert synth_main(["--dataset", "sthv2", "--out", str(tmp_path / "t"), "--classes", "99"]) == 2
    assert "--classes" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        synthesize("sthv1", tmp_path / "u", rgb_frames=True)


# ----------------------------------------------------------------------------------- the order-only task

def _objects(frame: np.ndarray, background: np.ndarray) -> list[tuple[float, float, np.ndarray]]:
    """(x, y, mean colour) of the changed pixels in the top and bottom halves of a frame, where any."""
    changed = np.abs(frame.astype(float) - background).sum(-1) > 60
    out = []
    for half in (slice(0, frame.shape[0] // 2), slice(frame.shape[0] // 2, None)):
        ys, xs = np.nonzero(changed[half])
        if len(xs):
            out.append((xs.mean(), ys.mean() + half.start if half.start else ys.mean(), frame[half][ys, xs].mean(0)))
    return out


@pytest.mark.parametrize("pair", range(len(ORDER_CLASSES) // 2))
def test_order_pairs_are_the_same_frames_in_reverse_order(pair):
    """The pair symmetry: the same random state gives class 2p+1 exactly class 2p's frames, reversed, so
    the two classes have the same bag of frames and only their order tells them apart."""
    for seed in range(3):
        forward = render_order_clip(2 * pair, 15, 64, 48, np.random.default_rng(seed))
        backward = render_order_clip(2 * pair + 1, 15, 64, 48, np.random.default_rng(seed))
        assert np.array_equal(backward, forward[::-1])
        assert sorted(f.tobytes() for f in forward) == sorted(f.tobytes() for f in backward)
        assert not np.array_equal(forward, backward)                  # the order is all there is to see


def test_order_what_and_where_pairs_need_the_object_and_its_place():
    """Pair 3: the red object goes right in class 6 whether it is on top or below (what); pair 4: the top
    object goes right in class 8 whatever the (shared) colour (where)."""
    red_on_top = set()
    for seed in range(8):
        clip = render_order_clip(6, 9, 64, 48, np.random.default_rng(seed))
        background = np.median(clip.astype(float), axis=0)
        first, last = _objects(clip[0], background), _objects(clip[-1], background)
        red = [i for i, (_, _, c) in enumerate(first) if c[0] > 150 and c[2] < 100]
        assert len(first) == 2 and len(red) == 1
        assert last[red[0]][0] > first[red[0]][0] + 20                  # red goes right
        red_on_top.add(red[0] == 0)
        clip = render_order_clip(8, 9, 64, 48, np.random.default_rng(seed))
        background = np.median(clip.astype(float), axis=0)
        (x0, _, c0), (x1, _, c1) = _objects(clip[0], background)
        (x0_end, _, _), (x1_end, _, _) = _objects(clip[-1], background)
        assert x0_end > x0 + 20 and x1_end < x1 - 20 and np.abs(c0 - c1).max() < 30
    assert red_on_top == {True, False}


def test_order_dataset_keeps_the_symmetry_through_sharding_and_decoding(tmp_path):
    """All-intra VP9 videos copied into shards: DALI decodes pair-mates to exactly reversed frames."""
    shards = synthesize_and_shard("sthv2", tmp_path, codec="copy", splits="val", classes=len(ORDER_CLASSES),
                                  clips_per_class=2, num_frames=9, width=48, height=32, task="order")
    names = json.loads((shards / "manifest.json").read_text())["classes"]["label"]
    assert names == list(ORDER_CLASSES)
    clips = {meta["id"]: (frames, meta["label"]) for frames, meta in read_dali(shards, "val", "webm")}
    assert len(clips) == len(ORDER_CLASSES)                              # clip j=1 of every class
    for frames, label in clips.values():
        mate = next(f for f, other in clips.values() if other == label ^ 1)
        assert np.array_equal(frames, mate[::-1])


def test_order_task_errors(tmp_path):
    with pytest.raises(ConfigError, match="sthv2 layout only"):
        synthesize("sthv1", tmp_path / "a", task="order")
    with pytest.raises(ConfigError, match=r"--classes must be within 1\.\.10"):
        synthesize("sthv2", tmp_path / "b", classes=12, task="order")
    with pytest.raises(ConfigError, match="--task 'shape'"):
        synthesize("sthv2", tmp_path / "c", task="shape")
