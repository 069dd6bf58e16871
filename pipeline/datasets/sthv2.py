"""Something-Something V2: `<id>.webm` videos + the JSON annotation files, under either release's names.

The owners map a video's `template` to a class after removing the square brackets around the
placeholders (`[something]`, `[Something]`, `[number of]`, `[part]`, ...). Test files carry ids only;
the later release adds `test-answers.csv` (`id;label`), used when present.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.datasets.files import find_file, read_csv_rows, read_json
from pipeline.datasets.records import (ClipRecord, DatasetIndex, Reject, make_key, records_by_split,
                                      unsafe_path_part)
from pipeline.errors import DataError

NAME = "sthv2"
SPLITS = ("train", "val", "test")
OPTIONS: dict = {}
FPS = 12.0
VIDEO_DIRS = ("20bn-something-something-v2", "videos", "")
LABELS_FILE = ("something-something-v2-labels.json", "labels.json")
# split -> the annotation files it needs, each as its candidate names (pipeline/datasets/__init__.py)
SPLIT_FILES = {
    "train": (("something-something-v2-train.json", "train.json"),),
    "val": (("something-something-v2-validation.json", "validation.json"),),
    "test": (("something-something-v2-test.json", "test.json"),),
}
TEST_ANSWERS = ("test-answers.csv",)
LABELLED_SPLITS = ("train", "val")       # every entry carries its template; test has ids only


def template_to_class_name(template: str) -> str:
    """'Putting [something] on [Something]' -> 'Putting something on Something' (the owners' rule)."""
    return template.replace("[", "").replace("]", "")


def read_labels(path: Path) -> list[str]:
    """Class names in id order from the labels JSON (`{name: "id"}`, ids as strings)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object {{class name: id}}, got {type(data).__name__}")
    by_id: dict[int, str] = {}
    for name, value in data.items():
        try:
            idx = int(value)
        except (TypeError, ValueError):
            raise DataError(f"{path}: class {name!r} has id {value!r}, expected an integer string") from None
        if idx in by_id:
            raise DataError(f"{path}: id {idx} given to both {by_id[idx]!r} and {name!r}")
        by_id[idx] = name
    if sorted(by_id) != list(range(len(by_id))):
        raise DataError(f"{path}: class ids are not 0..{len(by_id) - 1}")
    return [by_id[i] for i in range(len(by_id))]


def read_split(path: Path, split: str, class_ids: dict[str, int], videos: Path,
               answers: dict[str, str] | None = None) -> tuple[list[ClipRecord], list[Reject]]:
    """One split file -> records. Entries become rejects, with the reason, when their id cannot name a
    file under `videos`, their template is not a string or names no known class, or a train/val entry has
    no template (it would be written as an unlabelled training clip)."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of {{id, template, ...}}, got {type(data).__name__}")
    records, rejects = [], []
    for n, entry in enumerate(data):
        if not isinstance(entry, dict) or "id" not in entry:
            raise DataError(f"{path}: entry {n} has no 'id': {entry!r:.80}")
        vid = str(entry["id"])
        unsafe = unsafe_path_part(vid)
        if isinstance(entry["id"], bool) or not isinstance(entry["id"], (str, int)):
            reason: str | None = f"id {entry['id']!r} is not a string or an integer"
        elif unsafe:
            reason = f"id {vid!r} {unsafe}; it names the video file, which must be under {videos}"
        else:
            label, reason = _label(entry, vid, split, class_ids, answers)
        if reason is not None:
            rejects.append(Reject(NAME, split, vid, f"{path}#{n}", reason))
            continue
        meta = {"annotation": f"{path.name}#{n}"}
        if "placeholders" in entry:
            meta["placeholders"] = entry["placeholders"]
        records.append(ClipRecord(key=make_key(vid), dataset=NAME, split=split, id=vid, labels={"label": label},
                                  source_fps=FPS, video=videos / f"{vid}.webm", meta=meta))
    return records, rejects


def _label(entry: dict, vid: str, split: str, class_ids: dict[str, int],
           answers: dict[str, str] | None) -> tuple[int | None, str | None]:
    """(class id or None, None) or (None, why the entry is rejected)."""
    if "template" in entry:
        if not isinstance(entry["template"], str):
            return None, f"template {entry['template']!r} is not a string"
        name = template_to_class_name(entry["template"])
    elif answers is not None and vid in answers:
        name = answers[vid]
    elif split in LABELLED_SPLITS:
        return None, f"no template, so no class: every {split} entry needs one"
    else:
        return None, None
    label = class_ids.get(name)
    return (None, f"unknown label {name!r}") if label is None else (label, None)


def read_test_answers(path: Path) -> dict[str, str]:
    """`id;class name` per line, no header (the later release's test-answers.csv)."""
    answers = {}
    for line, fields in read_csv_rows(path, delimiter=";"):
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(f"{path}:{line}: expected 'id;label', got {';'.join(fields)!r}")
        if answers.get(fields[0], fields[1]) != fields[1]:
            raise DataError(f"{path}:{line}: id {fields[0]} answered again, with another class {fields[1]!r}")
        answers[fields[0]] = fields[1]
    return answers


def _videos_dir(root: Path) -> Path:
    """Where the webm files are; the first usual name when none exists yet (annotation-only checks,
    and every clip is then rejected as a missing video)."""
    for name in VIDEO_DIRS:
        if name and (root / name).is_dir():
            return root / name
    return root if any(root.glob("*.webm")) else root / VIDEO_DIRS[0]


def parse(root: Path, splits: tuple[str, ...]) -> DatasetIndex:
    root = Path(root)
    labels = read_labels(find_file(root, LABELS_FILE))
    class_ids = {name: i for i, name in enumerate(labels)}
    videos = _videos_dir(root)
    rejects: list[Reject] = []
    all_records: list[ClipRecord] = []
    answers_path = find_file(root, TEST_ANSWERS, required=False)
    for split in splits:
        answers = read_test_answers(answers_path) if split == "test" and answers_path else None
        (names,) = SPLIT_FILES[split]
        recs, rej = read_split(find_file(root, names), split, class_ids, videos, answers)
        all_records.extend(recs)
        rejects.extend(rej)
    return DatasetIndex(NAME, records_by_split(all_records, rejects, splits), rejects,
                        heads={"label": len(labels)}, classes={"label": labels},
                        extra={"test_labels": answers_path.name if answers_path and "test" in splits else None})
