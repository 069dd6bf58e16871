"""What EPIC-Kitchens-55 and -100 share: timestamps, frame numbering, class files, segment rows,
(verb, noun) action ids, and where a video's pixels are (the long MP4, or its `rgb_frames`).

Timestamps are `HH:MM:SS.ff` (start/stop) or `HH:MM:SS.fff` (narration, sometimes empty). The published
start/stop frames are `max(1, floor(t * fps))` with fps 60 for `PXX_YY` videos and 50 for the newer
`PXX_1YY`; frame files start at `frame_0000000001.jpg`. `all_nouns`/`all_noun_classes` are quoted
Python lists. Test files have no narration/verb/noun columns.
"""
from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.datasets.files import parse_int, read_csv_dicts
from pipeline.datasets.records import ClipRecord, Reject
from pipeline.errors import DataError

FRAME_PATTERN = "frame_{:010d}.jpg"
_TIMESTAMP = re.compile(r"^(\d+):(\d{2}):(\d{2}(?:\.\d+)?)$")
_VIDEO_ID = re.compile(r"(P[0-9]+)_([0-9]+)")       # fullmatch: both name folders and files
SEGMENT_COLUMNS = ("participant_id", "video_id", "start_timestamp", "stop_timestamp", "start_frame", "stop_frame")
LABEL_COLUMNS = ("verb_class", "noun_class")


def parse_timestamp(value: str, path: Path, line: int, column: str) -> float:
    """'00:01:02.35' -> 62.35 seconds."""
    m = _TIMESTAMP.match(value.strip())
    if not m:
        raise DataError(f"{path}:{line}: column {column!r} is {value!r}, expected HH:MM:SS.ff")
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])


def nominal_fps(video_id: str) -> float:
    """60 for `PXX_YY` (EPIC-55 recordings), 50 for `PXX_1YY` (the EPIC-100 extension)."""
    m = _VIDEO_ID.fullmatch(video_id)
    if not m:
        raise DataError(f"video id {video_id!r} is not of the form PXX_YY or PXX_1YY")
    return 50.0 if len(m[2]) == 3 else 60.0


def frame_of(seconds: float, fps: float) -> int:
    """The owners' frame number for a timestamp: max(1, floor(t * fps))."""
    return max(1, math.floor(seconds * fps))   # plain float arithmetic, as the owners computed it


def read_classes(path: Path, id_column: str, key_column: str) -> list[str]:
    """Class keys in id order from a `*_classes.csv` (EPIC-55: verb_id/class_key; EPIC-100: id/key)."""
    by_id: dict[int, str] = {}
    for line, row in read_csv_dicts(path, (id_column, key_column)):
        idx = parse_int(row[id_column], path, line, id_column)
        if idx in by_id:
            raise DataError(f"{path}:{line}: class id {idx} repeats")
        by_id[idx] = row[key_column]
    if sorted(by_id) != list(range(len(by_id))):
        raise DataError(f"{path}: class ids are not 0..{len(by_id) - 1}")
    return [by_id[i] for i in range(len(by_id))]


def parse_list(value: str, path: Path, line: int, column: str) -> list:
    """The quoted Python lists of `all_nouns` / `all_noun_classes`."""
    try:
        out = ast.literal_eval(value) if value.strip() else []
    except (ValueError, SyntaxError):
        raise DataError(f"{path}:{line}: column {column!r} is {value!r}, expected a Python list") from None
    if not isinstance(out, list):
        raise DataError(f"{path}:{line}: column {column!r} is {value!r}, expected a Python list")
    return out


@dataclass(frozen=True)
class Segment:
    """One parsed row: its id, participant, video, span, and labels (None on test rows)."""

    id: str
    participant: str
    video: str
    start_sec: float
    stop_sec: float
    start_frame: int
    stop_frame: int
    verb: int | None
    noun: int | None
    meta: dict
    where: str


def read_segments(path: Path, id_column: str, labelled: bool, num_verbs: int, num_nouns: int,
                  ) -> tuple[list[Segment], list[tuple[str, str, str]]]:
    """Rows of an EPIC segment file -> segments, and (id, where, reason) for rows to reject."""
    required = (id_column, *SEGMENT_COLUMNS, *(LABEL_COLUMNS if labelled else ()))
    segments, rejected = [], []
    for line, row in read_csv_dicts(path, required):
        where, sid = f"{path}:{line}", row[id_column]
        start = parse_timestamp(row["start_timestamp"], path, line, "start_timestamp")
        stop = parse_timestamp(row["stop_timestamp"], path, line, "stop_timestamp")
        first = parse_int(row["start_frame"], path, line, "start_frame")
        last = parse_int(row["stop_frame"], path, line, "stop_frame")
        video = _VIDEO_ID.fullmatch(row["video_id"])
        if not video:
            raise DataError(f"{where}: video_id {row['video_id']!r} is not of the form PXX_YY or PXX_1YY")
        if row["participant_id"] != video[1]:       # it names the video's folder
            raise DataError(f"{where}: participant_id {row['participant_id']!r} is not the one of video_id "
                            f"{row['video_id']!r} ({video[1]!r})")
        verb = noun = None
        meta: dict = {"participant": row["participant_id"], "video_id": row["video_id"]}
        if "narration" in row:
            meta["narration"] = row["narration"]
        if row.get("narration_timestamp"):
            meta["narration_sec"] = parse_timestamp(row["narration_timestamp"], path, line, "narration_timestamp")
        if labelled:
            if not row["verb_class"].strip() or not row["noun_class"].strip():
                rejected.append((sid, where, "empty verb_class or noun_class"))
                continue
            verb = parse_int(row["verb_class"], path, line, "verb_class")
            noun = parse_int(row["noun_class"], path, line, "noun_class")
            if not (0 <= verb < num_verbs and 0 <= noun < num_nouns):
                rejected.append((sid, where, f"unknown label: verb_class {verb}, noun_class {noun}"))
                continue
            meta["verb"], meta["noun"] = row.get("verb"), row.get("noun")
            if "all_noun_classes" in row:
                meta["all_noun_classes"] = parse_list(row["all_noun_classes"], path, line, "all_noun_classes")
        if not 1 <= first <= last:
            rejected.append((sid, where, f"empty span: frames {first}..{last}"))
            continue
        segments.append(Segment(sid, row["participant_id"], row["video_id"], start, stop, first, last,
                                verb, noun, meta, where))
    return segments, rejected


def action_pairs(segments: Iterable[Segment]) -> list[tuple[int, int]]:
    """The action classes: every (verb, noun) pair seen in the labelled files, sorted."""
    return sorted({(s.verb, s.noun) for s in segments if s.verb is not None})


def to_record(seg: Segment, dataset: str, split: str, key: str, source: Path, is_video: bool,
              action_ids: dict[tuple[int, int], int]) -> ClipRecord:
    action = action_ids.get((seg.verb, seg.noun)) if seg.verb is not None else None
    common = dict(key=key, dataset=dataset, split=split, id=seg.id,
                  labels={"label": action, "verb": seg.verb, "noun": seg.noun, "action": action},
                  source_fps=nominal_fps(seg.video), start_frame=seg.start_frame, end_frame=seg.stop_frame,
                  start_sec=seg.start_sec, stop_sec=seg.stop_sec,
                  meta={**seg.meta, "annotation": seg.where.rsplit("/", 1)[-1]})
    if is_video:
        return ClipRecord(video=source, **common)
    return ClipRecord(frames_dir=source, frame_pattern=FRAME_PATTERN, **common)


def locate_source(candidates: list[tuple[Path, bool]]) -> tuple[Path, bool]:
    """The first existing (path, is_video) of the candidates; the first one when none exists, so the
    sharder rejects its clips as a missing video and names the expected path."""
    for path, is_video in candidates:
        if path.exists():
            return path, is_video
    return candidates[0]


def reject(dataset: str, split: str, item: tuple[str, str, str]) -> Reject:
    sid, where, reason = item
    return Reject(dataset, split, sid, where, reason)
