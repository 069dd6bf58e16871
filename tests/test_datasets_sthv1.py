"""sthv1 parser: the `;` files, the class-id convention, on the vendored class list and written files."""
from __future__ import annotations

import pytest

from pipeline.datasets import parse_dataset, present_splits
from pipeline.datasets.sthv1 import read_labels, read_split
from pipeline.errors import ConfigError, DataError


def test_class_list_under_both_conventions(real_annotations):
    path = real_annotations / "sthv1/mmaction2/tools/data/sthv1/label_map.txt"
    by_file = read_labels(path, "file")
    by_name = read_labels(path, "alphabetical")
    assert len(by_file) == len(by_name) == 174 and sorted(by_file) == by_name
    assert by_file[0] == "Holding something" and by_file != by_name
    with pytest.raises(ConfigError):
        read_labels(path, "frequency")


def test_split_on_first_semicolon_only(tmp_path):
    split = tmp_path / "train.csv"
    split.write_bytes(b"10;Pretending to put something on, then taking it back\r\n11;Holding something\r\n12")
    ids = {"Pretending to put something on, then taking it back": 0, "Holding something": 1}
    with pytest.raises(DataError, match=r"train\.csv:3"):
        read_split(split, "train", ids, tmp_path)
    split.write_bytes(b"10;Pretending to put something on, then taking it back\r\n11;Holding something\r\n"
                      b"12;Not a class")
    records, rejects = read_split(split, "train", ids, tmp_path)
    assert [(r.id, r.labels["label"]) for r in records] == [("10", 0), ("11", 1)]
    assert rejects[0].id == "12" and "unknown label" in rejects[0].reason
    assert records[0].frames_dir == tmp_path / "10"


def test_parse_records_the_convention_and_duplicates(tmp_path):
    (tmp_path / "something-something-v1-labels.csv").write_text("b thing\na thing\n")
    (tmp_path / "something-something-v1-train.csv").write_text("1;b thing\n2;a thing\n")
    (tmp_path / "something-something-v1-validation.csv").write_text("3;a thing\n1;a thing")
    (tmp_path / "something-something-v1-test.csv").write_text("4\n")
    alpha = parse_dataset("sthv1", tmp_path, label_convention="alphabetical")
    infile = parse_dataset("sthv1", tmp_path, label_convention="file")
    assert alpha.extra == {"label_convention": "alphabetical"} and infile.extra == {"label_convention": "file"}
    assert [r.labels["label"] for r in alpha.records["train"]] == [1, 0]
    assert [r.labels["label"] for r in infile.records["train"]] == [0, 1]
    assert [r.id for r in alpha.records["val"]] == ["3"] and "duplicate" in alpha.rejects[0].reason
    assert alpha.records["test"][0].labels == {"label": None}
    assert alpha.num_rows == 5


def test_present_splits_names_the_file_looked_for(tmp_path):
    (tmp_path / "something-something-v1-labels.csv").write_text("a thing\n")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "something-something-v1-train.csv").write_text("1;a thing\n")
    (tmp_path / "something-something-v1-test.csv").write_text("2\n")
    present, absent = present_splits("sthv1", tmp_path)
    assert present == ("train", "test") and list(absent) == ["val"]
    assert absent["val"].startswith("annotation file not found; looked for: ")
    assert str(tmp_path / "annotations" / "something-something-v1-validation.csv") in absent["val"]
    assert list(parse_dataset("sthv1", tmp_path, present).records) == ["train", "test"]


def test_ids_that_are_not_one_folder_name_are_rejected(tmp_path):
    split = tmp_path / "train.csv"
    split.write_text("../1;a thing\n/abs;a thing\nx.y;a thing\nx-y;a thing\n")
    records, rejects = read_split(split, "train", {"a thing": 0}, tmp_path / "frames")
    assert [(r.id, r.key, r.frames_dir) for r in records] == [("x.y", "x~2Ey", tmp_path / "frames" / "x.y"),
                                                             ("x-y", "x-y", tmp_path / "frames" / "x-y")]
    assert [r.id for r in rejects] == ["../1", "/abs"]
    assert all("path separator" in r.reason and str(tmp_path / "frames") in r.reason for r in rejects)
