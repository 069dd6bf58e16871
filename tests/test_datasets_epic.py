"""EPIC-Kitchens-55/100 parsers on the owners' files: timestamps, frame rule, test files, classes."""
from __future__ import annotations

import csv
import os

import pytest

from pipeline.datasets import parse_dataset, present_splits
from pipeline.datasets.epic import frame_of, nominal_fps, parse_timestamp, read_segments
from pipeline.errors import DataError
from pipeline.synth import synthesize

SEGMENT_FILES = ["epic100/EPIC_100_validation.csv", "epic100/EPIC_100_validation.mid200.csv",
                 "epic100/EPIC_100_test_timestamps.csv", "epic100/UDA_annotations/EPIC_100_uda_source_train.csv",
                 "epic55/EPIC_train_action_labels.csv", "epic55/EPIC_train_action_labels.mid200.csv",
                 "epic55/EPIC_test_s1_timestamps.csv", "epic55/EPIC_test_s2_timestamps.csv",
                 "epic55/EPIC_train_invalid_labels.csv"]


@pytest.fixture
def epic100_root(real_annotations, tmp_path):
    """The EPIC-100 files under their published names; the UDA source-train file stands in for
    EPIC_100_train.csv (same 15 columns; see the README of the shared files)."""
    base = real_annotations / "epic100"
    for name in ("EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv", "EPIC_100_validation.csv",
                 "EPIC_100_test_timestamps.csv"):
        os.symlink(base / name, tmp_path / name)
    os.symlink(base / "UDA_annotations/EPIC_100_uda_source_train.csv", tmp_path / "EPIC_100_train.csv")
    return tmp_path


@pytest.mark.parametrize("name", SEGMENT_FILES)
def test_published_frames_follow_from_timestamps(real_annotations, name):
    """max(1, floor(t * fps)), fps 60 for PXX_YY and 50 for PXX_1YY, reproduces every start/stop frame."""
    with (real_annotations / name).open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows
    for n, row in enumerate(rows, 2):
        fps = nominal_fps(row["video_id"])
        for ts, fr in (("start_timestamp", "start_frame"), ("stop_timestamp", "stop_frame")):
            assert frame_of(parse_timestamp(row[ts], real_annotations / name, n, ts), fps) == int(row[fr])


def test_epic100_every_row_accounted_for(epic100_root):
    index = parse_dataset("epic", epic100_root)
    assert {s: len(v) for s, v in index.records.items()} == {"train": 500, "val": 500, "test": 13092}
    assert index.rejects == []
    assert index.heads == {"verb": 97, "noun": 300}
    val = index.records["val"][0]
    assert val.id == "P01_11_0" and val.labels["verb"] == 0 and val.labels["noun"] == 2
    assert index.classes["action"][val.labels["action"]] == [0, 2] and val.labels["label"] == val.labels["action"]
    assert val.meta["narration"] == "take plate" and val.meta["all_noun_classes"] == [2]
    assert val.start_frame == 1 and val.end_frame == 113 and val.stop_sec == pytest.approx(1.89)
    assert val.video.parts[-3:] == ("P01", "videos", "P01_11.MP4")
    assert all(r.labels == {"label": None, "verb": None, "noun": None, "action": None}
               for r in index.records["test"])
    assert next(r for r in index.records["test"] if r.id.startswith("P01_101")).source_fps == 50.0


def test_epic100_empty_narration_timestamp_and_rgb_frames(epic100_root):
    (epic100_root / "EPIC_100_validation.csv").unlink()
    src = epic100_root / "EPIC_100_validation.csv"
    src.write_text("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
                   "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n"
                   "P01_11_0,P01,P01_11,,00:00:00.00,00:00:01.89,1,113,take plate,take,0,plate,2,['plate'],[2]\n")
    (epic100_root / "P01/rgb_frames/P01_11").mkdir(parents=True)
    rec = parse_dataset("epic", epic100_root, ("val",)).records["val"][0]
    assert "narration_sec" not in rec.meta and rec.video is None
    assert rec.frames_dir.name == "P01_11" and rec.frame_pattern.format(1) == "frame_0000000001.jpg"


def test_epic55(real_annotations):
    index = parse_dataset("epic55", real_annotations / "epic55")
    assert {s: len(v) for s, v in index.records.items()} == {"train": 500, "test": 8047 + 2929}
    assert index.heads == {"verb": 125, "noun": 352} and index.rejects == []
    tests = index.records["test"]
    assert {r.meta["test_set"] for r in tests} == {"s1", "s2"}
    assert tests[0].video.parts[-4:] == ("videos", "test", "P01", "P01_11.MP4")
    assert len({r.key for recs in index.records.values() for r in recs}) == 500 + 8047 + 2929


def test_epic55_empty_verb_class_rejected(real_annotations):
    path = real_annotations / "epic55/EPIC_train_invalid_labels.csv"
    segments, rejected = read_segments(path, "uid", True, 125, 352)
    assert len(segments) + len(rejected) == 116
    assert len(rejected) == 116 and all(reason.startswith("empty verb_class") for _, _, reason in rejected)


SYNTH_FILES = {"epic55": ("EPIC_video_info.csv", "EPIC_train_action_labels.csv", "EPIC_test_s1_timestamps.csv",
                          "EPIC_test_s2_timestamps.csv", "EPIC_verb_classes.csv", "EPIC_noun_classes.csv"),
               "epic100": ("EPIC_100_video_info.csv", "EPIC_100_validation.csv", "EPIC_100_test_timestamps.csv",
                           "EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv")}


@pytest.mark.parametrize("dataset", SYNTH_FILES)
def test_synthetic_epic_files_have_the_owners_headers(real_annotations, tmp_path, dataset):
    """synth.py's EPIC files use the published column names and order (EPIC-55's video info says
    `video`, EPIC-100's `video_id`, in other column orders)."""
    root = synthesize(dataset, tmp_path / dataset, classes=2, clips_per_class=4, num_frames=8, width=48, height=32)
    for name in SYNTH_FILES[dataset]:
        theirs = (real_annotations / dataset / name).read_text().splitlines()[0]
        assert (root / name).read_text().splitlines()[0] == theirs, name


def test_malformed_timestamp_names_file_and_line(tmp_path):
    path = tmp_path / "EPIC_100_test_timestamps.csv"
    path.write_text("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
                    "start_frame,stop_frame\nP01_101_0,P01,P01_101,00:00:02.851,00:00:02.86,00:00:03.87,143,193\n"
                    "P01_101_1,P01,P01_101,00:00:05.102,4.97,00:00:05.75,248,287\n")
    with pytest.raises(DataError, match=r"EPIC_100_test_timestamps\.csv:3: column 'start_timestamp'"):
        read_segments(path, "narration_id", False, 97, 300)


def test_epic100_with_only_the_train_file(tmp_path):
    """Default splits on a root with only EPIC_100_train.csv: train alone, the action classes from it,
    exactly what --splits train gives there."""
    root = synthesize("epic100", tmp_path / "raw", classes=2, clips_per_class=2, num_frames=8, width=48, height=32)
    (root / "EPIC_100_validation.csv").unlink()
    (root / "EPIC_100_test_timestamps.csv").unlink()
    present, absent = present_splits("epic", root)
    assert present == ("train",) and list(absent) == ["val", "test"]
    assert "EPIC_100_validation.csv" in absent["val"] and "EPIC_100_test_timestamps.csv" in absent["test"]
    index = parse_dataset("epic", root, present)
    assert index.extra == {"action_classes_from": ["EPIC_100_train.csv"]}
    train_pairs = sorted({(r.labels["verb"], r.labels["noun"]) for r in index.records["train"]})
    assert [tuple(p) for p in index.classes["action"]] == train_pairs
    explicit = parse_dataset("epic", root, ("train",))
    assert explicit.classes == index.classes and explicit.records == index.records


@pytest.mark.parametrize("participant", ["P02", "../P01", "P01/.."])
def test_participant_must_be_the_videos_own(tmp_path, participant):
    """participant_id names the folder a video is looked up in: anything but the video id's own prefix
    is an error naming the line (`../P01` would have read a video outside the dataset root)."""
    path = tmp_path / "EPIC_100_test_timestamps.csv"
    path.write_text("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
                    f"start_frame,stop_frame\nP01_101_0,P01,P01_101,,00:00:02.86,00:00:03.87,143,193\n"
                    f"P01_101_1,{participant},P01_101,,00:00:04.97,00:00:05.75,248,287\n")
    with pytest.raises(DataError, match=r"EPIC_100_test_timestamps\.csv:3: participant_id .* is not the one of"):
        read_segments(path, "narration_id", False, 97, 300)
