"""EPIC-Kitchens-100: `P01/videos/P01_101.MP4` (or `P01/rgb_frames/P01_101/` folders or `.tar`s) +
the annotation repository's `EPIC_100_{train,validation}.csv`, `EPIC_100_test_timestamps.csv` and
`EPIC_100_{verb,noun}_classes.csv`. Shared rules in pipeline/datasets/epic.py."""
from __future__ import annotations

from pathlib import Path

from pipeline.datasets import epic
from pipeline.datasets.files import find_file
from pipeline.datasets.records import ClipRecord, DatasetIndex, make_key, records_by_split

NAME = "epic100"
SPLITS = ("train", "val", "test")
OPTIONS: dict = {}
# split -> the annotation files it needs, each as its candidate names (pipeline/datasets/__init__.py)
SPLIT_FILES = {"train": (("EPIC_100_train.csv",),), "val": (("EPIC_100_validation.csv",),),
               "test": (("EPIC_100_test_timestamps.csv",),)}
VERBS, NOUNS = "EPIC_100_verb_classes.csv", "EPIC_100_noun_classes.csv"


def source_of(root: Path, participant: str, video: str) -> tuple[Path, bool]:
    return epic.locate_source([
        (root / participant / "videos" / f"{video}.MP4", True),
        (root / participant / "videos" / f"{video}.mp4", True),
        (root / participant / "rgb_frames" / video, False),
        (root / participant / "rgb_frames" / f"{video}.tar", False),
    ])


def parse(root: Path, splits: tuple[str, ...]) -> DatasetIndex:
    verbs = epic.read_classes(find_file(root, (VERBS,)), "id", "key")
    nouns = epic.read_classes(find_file(root, (NOUNS,)), "id", "key")
    parsed: dict[str, list[epic.Segment]] = {}
    found: dict[str, Path] = {}
    rejects = []
    # action ids come from every labelled file present, whichever splits this run writes
    for split in SPLITS:
        (names,) = SPLIT_FILES[split]
        path = find_file(root, names, required=split in splits)
        if path is None:
            continue
        segments, bad = epic.read_segments(path, "narration_id", split != "test", len(verbs), len(nouns))
        parsed[split], found[split] = segments, path
        if split in splits:
            rejects.extend(epic.reject(NAME, split, b) for b in bad)
    actions = epic.action_pairs(s for split in ("train", "val") for s in parsed.get(split, []))
    action_ids = {pair: i for i, pair in enumerate(actions)}
    everything: list[ClipRecord] = []
    for split in splits:
        for seg in parsed[split]:
            source, is_video = source_of(root, seg.participant, seg.video)
            everything.append(epic.to_record(seg, NAME, split, make_key(seg.id), source, is_video, action_ids))
    records = records_by_split(everything, rejects, splits)
    return DatasetIndex(NAME, records, rejects, heads={"verb": len(verbs), "noun": len(nouns)},
                        classes={"verb": verbs, "noun": nouns, "action": [list(p) for p in actions]},
                        extra={"action_classes_from": [found[s].name for s in ("train", "val") if s in found]})
