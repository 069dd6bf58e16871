"""What every parser shares: keys made from the owners' ids, and the first-record-wins rule per key."""
from __future__ import annotations

import pytest

from pipeline.datasets.records import ClipRecord, id_of_key, make_key, records_by_split, unsafe_path_part


PLAIN = ["1000", "P01_101_12", "x-y", "Subject03", "-x_"]
OTHER = ["x.y", "a/b", "a b", "~7E", "ü.ë", "x\ty", "x~2Ey", "x~2"]


@pytest.mark.parametrize("vid", PLAIN)
def test_plain_ids_are_their_own_keys(vid):
    assert make_key(vid) == vid and id_of_key(vid) == vid


@pytest.mark.parametrize("vid", OTHER)
def test_other_ids_get_reversible_keys_without_dot_slash_or_space(vid):
    key = make_key(vid)
    assert id_of_key(key) == vid and not set(key) & set("./ \t")


def test_distinct_ids_get_distinct_keys():
    assert len({make_key(vid) for vid in PLAIN + OTHER}) == len(PLAIN + OTHER)


def test_a_shared_key_of_different_ids_is_not_called_a_duplicate():
    def rec(vid, key, split="train"):
        return ClipRecord(key=key, dataset="d", split=split, id=vid, labels={"label": 0}, source_fps=1.0)

    rejects = []
    kept = records_by_split([rec("a", "k"), rec("b", "k"), rec("a", "k", "val")], rejects, ("train", "val"))
    assert [r.id for r in kept["train"]] == ["a"] and kept["val"] == []
    assert [r.reason for r in rejects] == ["key 'k' of id 'b' is already the key of id 'a' (split 'train')",
                                           "duplicate id 'a' (first seen in split 'train')"]


@pytest.mark.parametrize("value,safe", [("1000", True), ("x.y", True), ("", False), ("..", False),
                                        ("a/b", False), ("a\\b", False), ("/a", False), ("C:a", False),
                                        ("a\0b", False)])
def test_unsafe_path_parts(value, safe):
    assert (unsafe_path_part(value) is None) == safe
