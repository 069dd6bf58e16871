"""EgoGesture parser on all 1872 published label files, checked against another project's lists."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.datasets import parse_dataset, present_splits
from pipeline.datasets.egogesture import SUBJECT_SPLITS, read_group
from pipeline.errors import DataError

OMITTED = {15, 19, 30, 37, 43}   # left out of the shared copy (README)


@pytest.fixture(scope="module")
def index(real_annotations):
    return parse_dataset("egogesture", real_annotations / "egogesture")


def test_every_row_accounted_for(index, real_annotations):
    files = list((real_annotations / "egogesture/labels-final-revised1").rglob("*.csv"))
    assert len(files) == 1872
    nonblank = sum(1 for f in files for line in f.read_text().splitlines() if line.strip(" ,"))
    blank = sum(1 for f in files for line in f.read_text().splitlines() if line.strip() and not line.strip(" ,"))
    assert blank == 1 and nonblank == 21689
    assert index.num_rows == nonblank + blank
    assert [r.reason for r in index.rejects] == ["blank row"]
    assert "subject03/Scene2/Group6.csv" in index.rejects[0].source


def test_quirks(index, real_annotations):
    lower = [r for r in index.records["val"] if r.meta["subject"] == "Subject33" and r.meta["scene"] == 5]
    assert lower and all("group" in r.meta["annotation"] for r in lower)   # lower-case group*.csv read
    rec = index.records["train"][0]
    assert rec.frames_dir.parts[-4:] == ("Subject03", "Scene1", "Color", "rgb1") and rec.frame_pattern == "{:06d}.jpg"
    assert all(0 <= r.labels["label"] < 83 for recs in index.records.values() for r in recs)


@pytest.mark.parametrize("split,listing", [("train", "trainlistall_but_None.txt"),
                                           ("val", "vallistall_but_None.txt"),
                                           ("test", "testlistall_but_None.txt")])
def test_official_subject_splits_match_third_party_lists(index, real_annotations, split, listing):
    path = real_annotations / "egogesture/third_party_Real-time-GesRec/annotation_EgoGesture" / listing
    theirs = set()
    for line in path.read_text().splitlines():
        folder, label, start, end = line.split()
        if int(folder[7:9]) not in OMITTED:
            theirs.add((folder, int(label) - 1, int(float(start)), int(float(end))))
    mine = {(r.id.split(":")[0], r.labels["label"], r.start_frame, r.end_frame) for r in index.records[split]}
    assert mine == theirs
    assert {int(r.meta["subject"][7:]) for r in index.records[split]} <= set(SUBJECT_SPLITS[split])


def test_malformed_rows(tmp_path):
    path = tmp_path / "Group1.csv"
    path.write_text("5,10,40\n84,50,60\n7,90,80\n")
    records, rejects = read_group(path, 3, 1, 1, "train", Path("frames"))
    assert [r.labels["label"] for r in records] == [4] and records[0].key == "Subject03_Scene1_rgb1_10_40"
    assert ["unknown label" in r.reason for r in rejects] == [True, False]
    path.write_text("5,10,40\n5,ten,40\n")
    with pytest.raises(DataError, match=r"Group1\.csv:2"):
        read_group(path, 3, 1, 1, "train", Path("frames"))


def test_every_split_is_always_present(tmp_path):
    """The splits are subject lists inside one set of label files, not files of their own."""
    assert present_splits("egogesture", tmp_path) == (("train", "val", "test"), {})
