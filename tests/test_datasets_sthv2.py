"""sthv2 parser on the owners' files (both releases' names) and on malformed copies."""
from __future__ import annotations

import csv
import json
import os

import pytest

from pipeline.datasets import parse_dataset
from pipeline.datasets.sthv2 import read_labels, read_split, read_test_answers, template_to_class_name
from pipeline.errors import DataError


def manifest_rows(real, local: str) -> int:
    with (real / "MANIFEST.tsv").open() as fh:
        return next(int(r["rows"]) for r in csv.DictReader(fh, delimiter="\t") if r["local"] == local)


def test_template_brackets_removed():
    assert template_to_class_name("Putting [number of] [something] onto [Something]") == \
        "Putting number of something onto Something"


def test_both_releases_give_the_same_classes(real_annotations):
    old = read_labels(real_annotations / "sthv2/20bn_names/something-something-v2-labels.json")
    new = read_labels(real_annotations / "sthv2/qualcomm_names/labels/labels.json")
    mm = (real_annotations / "sthv2/mmaction2/tools/data/sthv2/label_map.txt").read_text().splitlines()
    assert old == new == mm and len(old) == 174


@pytest.mark.parametrize("folder,name", [("20bn_names", "something-something-v2-validation"),
                                         ("20bn_names", "something-something-v2-validation.mid200"),
                                         ("qualcomm_names/labels", "validation"),
                                         ("qualcomm_names/labels", "validation.mid200")])
def test_every_validation_row_maps_to_a_class(real_annotations, tmp_path, folder, name):
    base = real_annotations / "sthv2" / folder
    labels = read_labels(next(base.glob("*labels.json")))
    path = base / f"{name}.json"
    records, rejects = read_split(path, "val", {n: i for i, n in enumerate(labels)}, tmp_path)
    assert len(records) + len(rejects) == manifest_rows(real_annotations, f"sthv2/{folder}/{name}.json")
    assert rejects == [] and all(r.labels["label"] is not None for r in records)
    assert path.read_bytes().count(b"\r\n") > 0 or folder != "20bn_names"   # the CRLF quirk is exercised
    assert len({r.key for r in records}) == len(records)


def test_test_split_ids_only_and_answers(real_annotations, tmp_path):
    base = real_annotations / "sthv2/qualcomm_names/labels"
    labels = read_labels(base / "labels.json")
    ids = {n: i for i, n in enumerate(labels)}
    records, rejects = read_split(base / "test.json", "test", ids, tmp_path)
    assert len(records) == 27157 and rejects == [] and all(r.labels["label"] is None for r in records)
    answers = read_test_answers(base / "test-answers.csv")
    assert len(answers) == 500 and all(a in ids for a in answers.values())
    labelled, _ = read_split(base / "test.json", "test", ids, tmp_path, answers)
    assert sum(r.labels["label"] is not None for r in labelled) == 500


def test_whole_parse_with_later_release_names(real_annotations, tmp_path):
    for name in ("labels.json", "validation.json", "test.json", "test-answers.csv"):
        os.symlink(real_annotations / "sthv2/qualcomm_names/labels" / name, tmp_path / name)
    index = parse_dataset("sthv2", tmp_path, ("val", "test"))
    assert len(index.records["val"]) == 500 and len(index.records["test"]) == 27157
    assert index.heads == {"label": 174} and index.extra["test_labels"] == "test-answers.csv"


def test_unknown_template_is_rejected_and_bad_json_names_the_line(tmp_path):
    path = tmp_path / "v.json"
    path.write_text('[\r\n{"id":"1","template":"Moving [something] up"},\r\n{"id":"2","template":"Nope"}\r\n]')
    records, rejects = read_split(path, "val", {"Moving something up": 0}, tmp_path)
    assert [r.id for r in records] == ["1"] and rejects[0].id == "2" and "unknown label" in rejects[0].reason
    path.write_text('[\n{"id":"1","template":"x"},\n{"id":"2" "template":"y"}\n]')
    with pytest.raises(DataError, match=r"v\.json:3"):
        read_split(path, "val", {}, tmp_path)


def test_malformed_entries_are_rejected_with_reasons(tmp_path):
    """Before: a null or numeric template crashed the parser, a train entry without one became an
    unlabelled training clip, and `../x` read a video outside the dataset."""
    path = tmp_path / "train.json"
    ok = "Moving [something] up"
    path.write_text(json.dumps([{"id": "1", "template": None}, {"id": "2", "template": 5}, {"id": "3"},
                                {"id": "../x", "template": ok}, {"id": "/abs/x", "template": ok},
                                {"id": "..", "template": ok}, {"id": None, "template": ok}, {"id": 7, "template": ok}]))
    records, rejects = read_split(path, "train", {"Moving something up": 0}, tmp_path / "videos")
    reasons = {r.id: r.reason for r in rejects}
    assert reasons["1"] == "template None is not a string" and reasons["2"] == "template 5 is not a string"
    assert reasons["3"] == "no template, so no class: every train entry needs one"
    for vid in ("../x", "/abs/x"):
        assert "contains a path separator" in reasons[vid] and str(tmp_path / "videos") in reasons[vid]
    assert "'.' or '..'" in reasons[".."] and reasons["None"] == "id None is not a string or an integer"
    assert [(r.id, r.labels["label"], r.video) for r in records] == [("7", 0, tmp_path / "videos" / "7.webm")]
    records, rejects = read_split(path, "test", {"Moving something up": 0}, tmp_path / "videos")
    assert not any(r.id == "3" for r in rejects) and next(r for r in records if r.id == "3").labels["label"] is None


def test_distinct_ids_get_distinct_keys(tmp_path):
    """`x.y` and `x-y` both became key `x-y`, and the second was rejected as a "duplicate"."""
    (tmp_path / "labels.json").write_text('{"Moving something up": "0"}')
    entries = [{"id": vid, "template": "Moving [something] up"} for vid in ("x.y", "x-y", "x y", "x-y")]
    (tmp_path / "train.json").write_text(json.dumps(entries))
    index = parse_dataset("sthv2", tmp_path, ("train",))
    assert [(r.id, r.key) for r in index.records["train"]] == [("x.y", "x~2Ey"), ("x-y", "x-y"), ("x y", "x~20y")]
    assert [(r.id, r.reason) for r in index.rejects] == [("x-y", "duplicate id 'x-y' (first seen in split 'train')")]


def test_conflicting_test_answers_name_the_line(tmp_path):
    path = tmp_path / "test-answers.csv"
    path.write_text("1;Moving something up\n2;Moving something up\n1;Moving something up\n")
    assert read_test_answers(path) == {"1": "Moving something up", "2": "Moving something up"}
    path.write_text("1;Moving something up\n1;Moving something down\n")
    with pytest.raises(DataError, match=r"test-answers\.csv:2: id 1 answered again"):
        read_test_answers(path)
