"""sthv2 parser on the owners' files (both releases' names) and on malformed copies."""
from __future__ import annotations

import csv
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
