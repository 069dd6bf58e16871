"""Something-Something V1: JPEG frame folders `20bn-something-something-v1/<id>/00001.jpg` + the
`something-something-v1-{labels,train,validation,test}.csv` files.

The labels file lists one class name per line; split files are `id;label` with no header, and labels
contain commas, so a line splits on its first `;` only. Tools disagree on class ids: TSM and TRN sort
the names alphabetically, others use the labels file's order. The choice is the `label_convention`
option and goes into the manifest.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.datasets.files import find_file
from pipeline.datasets.records import (ClipRecord, DatasetIndex, Reject, make_key, records_by_split,
                                      unsafe_path_part)
from pipeline.errors import ConfigError, DataError

NAME = "sthv1"
SPLITS = ("train", "val", "test")
OPTIONS = {"label_convention": "alphabetical"}
CONVENTIONS = ("alphabetical", "file")
FPS = 12.0
FRAME_PATTERN = "{:05d}.jpg"
FRAME_DIRS = ("20bn-something-something-v1", "frames", "")
LABELS_FILE = ("something-something-v1-labels.csv",)
# split -> the annotation files it needs, each as its candidate names (pipeline/datasets/__init__.py)
SPLIT_FILES = {
    "train": (("something-something-v1-train.csv",),),
    "val": (("something-something-v1-validation.csv",),),
    "test": (("something-something-v1-test.csv",),),
}


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the non-blank lines; CRLF or LF, last newline optional."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc
    return [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1) if line.strip()]


def read_labels(path: Path, convention: str) -> list[str]:
    """Class names in class-id order under `convention` (alphabetical or the file's order)."""
    if convention not in CONVENTIONS:
        raise ConfigError(f"label_convention {convention!r} is not one of {', '.join(CONVENTIONS)}")
    names, seen = [], {}
    for n, line in _lines(path):
        name = line.strip()
        if name in seen:
            raise DataError(f"{path}:{n}: class {name!r} repeats line {seen[name]}")
        seen[name] = n
        names.append(name)
    if not names:
        raise DataError(f"{path}: no class names")
    return sorted(names) if convention == "alphabetical" else names


def read_split(path: Path, split: str, class_ids: dict[str, int],
               frames: Path) -> tuple[list[ClipRecord], list[Reject]]:
    """`id;label` lines (test: `id`) -> records; an unknown label, or an id that cannot name a folder under
    `frames`, becomes a reject."""
    records, rejects = [], []
    for n, line in _lines(path):
        vid, sep, name = line.partition(";")
        vid = vid.strip()
        if not vid or (split != "test" and not sep):
            raise DataError(f"{path}:{n}: expected 'id;label', got {line!r}")
        unsafe = unsafe_path_part(vid)
        if unsafe:
            reason = f"id {vid!r} {unsafe}; it names the frame folder, which must be under {frames}"
            rejects.append(Reject(NAME, split, vid, f"{path}:{n}", reason))
            continue
        label = None
        if sep:
            label = class_ids.get(name)
            if label is None:
                rejects.append(Reject(NAME, split, vid, f"{path}:{n}", f"unknown label {name!r}"))
                continue
        records.append(ClipRecord(key=make_key(vid), dataset=NAME, split=split, id=vid, labels={"label": label},
                                  source_fps=FPS, frames_dir=frames / vid, frame_pattern=FRAME_PATTERN,
                                  meta={"annotation": f"{path.name}:{n}"}))
    return records, rejects


def _frames_dir(root: Path) -> Path:
    for name in FRAME_DIRS:
        if name and (root / name).is_dir():
            return root / name
    return root


def parse(root: Path, splits: tuple[str, ...], label_convention: str = "alphabetical") -> DatasetIndex:
    labels = read_labels(find_file(root, LABELS_FILE), label_convention)
    class_ids = {name: i for i, name in enumerate(labels)}
    frames = _frames_dir(root)
    everything, rejects = [], []
    for split in splits:
        (names,) = SPLIT_FILES[split]
        recs, rej = read_split(find_file(root, names), split, class_ids, frames)
        everything.extend(recs)
        rejects.extend(rej)
    records = records_by_split(everything, rejects, splits)
    return DatasetIndex(NAME, records, rejects, heads={"label": len(labels)}, classes={"label": labels},
                        extra={"label_convention": label_convention})
