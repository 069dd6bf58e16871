"""synth.py: every dataset in its owners' layout (the parsers read it with no rejects), the label is in
the motion, and the same seed writes the same dataset."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.datasets import parse_dataset
from pipeline.errors import ConfigError
from pipeline.synth import (DIRECTIONS, MAX_MIRROR_FREE_CLASSES, class_phrase, main as synth_main, render_clip,
                            synthesize)

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
