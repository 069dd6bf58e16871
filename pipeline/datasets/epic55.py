"""EPIC-Kitchens-55: `videos/<train|test>/P01/P01_01.MP4` (or `frames_rgb_flow/rgb/<split>/P01/P01_01/`
folders or `.tar`s) + `EPIC_train_action_labels.csv`, `EPIC_test_s{1,2}_timestamps.csv` (seen and
unseen kitchens, both in the `test` split, told apart by `test_set`) and `EPIC_{verb,noun}_classes.csv`.
Rows with an empty `verb_class` are rejected. Shared rules in pipeline/datasets/epic.py."""
from __future__ import annotations

from pathlib import Path

from pipeline.datasets import epic
from pipeline.datasets.files import find_file
from pipeline.datasets.records import ClipRecord, DatasetIndex, make_key, records_by_split

NAME = "epic55"
SPLITS = ("train", "test")
OPTIONS: dict = {}
# split -> the annotation files it needs, each as its candidate names (pipeline/datasets/__init__.py);
# the test split needs both files, one per test set (seen kitchens s1, unseen s2)
SPLIT_FILES = {"train": (("EPIC_train_action_labels.csv",),),
               "test": (("EPIC_test_s1_timestamps.csv",), ("EPIC_test_s2_timestamps.csv",))}
TEST_SETS = ("s1", "s2")
VERBS, NOUNS = "EPIC_verb_classes.csv", "EPIC_noun_classes.csv"


def source_of(root: Path, split: str, participant: str, video: str) -> tuple[Path, bool]:
    """EPIC-55 keeps each split's videos and frames in a folder named after the split."""
    frames = root / "frames_rgb_flow" / "rgb" / split / participant
    return epic.locate_source([
        (root / "videos" / split / participant / f"{video}.MP4", True),
        (root / "videos" / split / participant / f"{video}.mp4", True),
        (frames / video, False),
        (frames / f"{video}.tar", False),
    ])


def parse(root: Path, splits: tuple[str, ...]) -> DatasetIndex:
    verbs = epic.read_classes(find_file(root, (VERBS,)), "verb_id", "class_key")
    nouns = epic.read_classes(find_file(root, (NOUNS,)), "noun_id", "class_key")
    (train_names,) = SPLIT_FILES["train"]
    train_path = find_file(root, train_names, required="train" in splits)
    train, bad_train = (epic.read_segments(train_path, "uid", True, len(verbs), len(nouns))
                        if train_path else ([], []))
    actions = epic.action_pairs(train)
    action_ids = {pair: i for i, pair in enumerate(actions)}
    everything: list[ClipRecord] = []
    rejects = []
    if "train" in splits:
        rejects.extend(epic.reject(NAME, "train", b) for b in bad_train)
        everything.extend(_records(root, "train", train, action_ids))
    if "test" in splits:
        for test_set, names in zip(TEST_SETS, SPLIT_FILES["test"], strict=True):
            segments, bad = epic.read_segments(find_file(root, names), "uid", False, len(verbs), len(nouns))
            rejects.extend(epic.reject(NAME, "test", b) for b in bad)
            everything.extend(_records(root, "test", segments, action_ids, test_set))
    records = records_by_split(everything, rejects, splits)
    return DatasetIndex(NAME, records, rejects, heads={"verb": len(verbs), "noun": len(nouns)},
                        classes={"verb": verbs, "noun": nouns, "action": [list(p) for p in actions]},
                        extra={"action_classes_from": [train_path.name] if train_path else []})


def _records(root: Path, split: str, segments: list[epic.Segment], action_ids: dict,
             test_set: str | None = None) -> list[ClipRecord]:
    out = []
    for seg in segments:
        source, is_video = source_of(root, split, seg.participant, seg.video)
        if test_set:
            seg.meta["test_set"] = test_set
        out.append(epic.to_record(seg, NAME, split, make_key(seg.video, seg.id), source, is_video, action_ids))
    return out
