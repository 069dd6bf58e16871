"""EgoGesture: frames `SubjectNN/SceneK/Color/rgbG/000001.jpg` + label files
`labels-final-revised1/subjectNN/SceneK/GroupG.csv` with rows `label,start,end` (no header).

One clip per labelled gesture, frames start..end (1-based, inclusive). Label folders are lower case
(`subjectNN`), frame folders capitalised (`SubjectNN`); some scenes use `groupG.csv`; some subjects lack
scenes; blank ` ,,` rows and files without a final newline occur; `.DS_Store` strays are ignored. The
splits are the owners' subject lists (Zhang et al., "EgoGesture", IEEE TMM 2018).
"""
from __future__ import annotations

import re
from pathlib import Path

from pipeline.datasets.files import find_dir, read_csv_rows
from pipeline.datasets.records import ClipRecord, DatasetIndex, Reject, make_key, records_by_split
from pipeline.errors import DataError

NAME = "egogesture"
SPLITS = ("train", "val", "test")
OPTIONS: dict = {}
SPLIT_FILES = None   # the splits are subject lists over one set of label files: every split is always there
FPS = 30.0
NUM_CLASSES = 83
FRAME_PATTERN = "{:06d}.jpg"
LABEL_DIRS = ("labels-final-revised1", "labels")
FRAME_DIRS = ("images_320-240", "")
SUBJECT_SPLITS = {
    "train": (3, 4, 5, 6, 8, 10, 15, 16, 17, 20, 21, 22, 23, 25, 26, 27, 30, 32, 36, 38, 39, 40, 42, 43, 44,
              45, 46, 48, 49, 50),
    "val": (1, 7, 12, 13, 24, 29, 33, 34, 35, 37),
    "test": (2, 9, 11, 14, 18, 19, 28, 31, 41, 47),
}
SPLIT_OF_SUBJECT = {s: split for split, subjects in SUBJECT_SPLITS.items() for s in subjects}
CLASS_NAMES = [f"gesture {i}" for i in range(1, NUM_CLASSES + 1)]   # the owners' ids, 1-based
_SUBJECT = re.compile(r"^subject(\d+)$", re.IGNORECASE)
_SCENE = re.compile(r"^scene(\d+)$", re.IGNORECASE)
_GROUP = re.compile(r"^group(\d+)\.csv$", re.IGNORECASE)


def label_files(labels_root: Path) -> list[tuple[int, int, int, Path]]:
    """(subject, scene, group, path) of every label CSV, in numeric order; strays are skipped."""
    found = []
    for subject_dir in labels_root.iterdir():
        m_subject = _SUBJECT.match(subject_dir.name)
        if not (m_subject and subject_dir.is_dir()):
            continue
        for scene_dir in subject_dir.iterdir():
            m_scene = _SCENE.match(scene_dir.name)
            if not (m_scene and scene_dir.is_dir()):
                continue
            for path in scene_dir.iterdir():
                m_group = _GROUP.match(path.name)
                if m_group and path.is_file():
                    found.append((int(m_subject[1]), int(m_scene[1]), int(m_group[1]), path))
    return sorted(found)


def read_group(path: Path, subject: int, scene: int, group: int, split: str,
               frames_root: Path) -> tuple[list[ClipRecord], list[Reject]]:
    """One `GroupG.csv` -> one record per gesture row; blank rows and bad labels or spans -> rejects."""
    frames = frames_root / f"Subject{subject:02d}" / f"Scene{scene}" / "Color" / f"rgb{group}"
    records, rejects = [], []
    for line, fields in read_csv_rows(path):
        where = f"{path}:{line}"
        if not fields or all(not f.strip() for f in fields):
            rejects.append(Reject(NAME, split, where, where, "blank row"))
            continue
        if len(fields) != 3:
            raise DataError(f"{where}: expected 'label,start,end', got {','.join(fields)!r}")
        try:
            label, start, end = (int(f) for f in fields)
        except ValueError:
            raise DataError(f"{where}: expected three integers 'label,start,end', got {','.join(fields)!r}") from None
        vid = f"Subject{subject:02d}/Scene{scene}/Color/rgb{group}:{start}-{end}"
        if not 1 <= label <= NUM_CLASSES:
            rejects.append(Reject(NAME, split, vid, where, f"unknown label {label} (classes are 1..{NUM_CLASSES})"))
            continue
        if not 1 <= start <= end:
            rejects.append(Reject(NAME, split, vid, where, f"empty or negative span {start}..{end}"))
            continue
        records.append(ClipRecord(
            key=make_key(f"Subject{subject:02d}", f"Scene{scene}", f"rgb{group}", start, end), dataset=NAME,
            split=split, id=vid, labels={"label": label - 1}, source_fps=FPS, frames_dir=frames,
            frame_pattern=FRAME_PATTERN, start_frame=start, end_frame=end,
            meta={"subject": f"Subject{subject:02d}", "scene": scene, "group": group,
                  "annotation": f"{path.relative_to(path.parents[2])}:{line}"}))
    return records, rejects


def parse(root: Path, splits: tuple[str, ...]) -> DatasetIndex:
    labels_root = find_dir(root, LABEL_DIRS)
    frames_root = next((root / d for d in FRAME_DIRS if d and (root / d).is_dir()), root)
    everything, rejects = [], []
    for subject, scene, group, path in label_files(labels_root):
        split = SPLIT_OF_SUBJECT.get(subject)
        if split is None:
            raise DataError(f"{path}: subject {subject} is in none of the owners' splits (1..50)")
        if split not in splits:
            continue
        recs, rej = read_group(path, subject, scene, group, split, frames_root)
        everything.extend(recs)
        rejects.extend(rej)
    records = records_by_split(everything, rejects, splits)
    return DatasetIndex(NAME, records, rejects, heads={"label": NUM_CLASSES}, classes={"label": CLASS_NAMES},
                        extra={"label_base": "class id = the owners' label - 1"})
