"""What every dataset parser hands to the sharder: clip records, rejected rows, and the class maps.

Parsers know the owners' layouts; the sharder knows only these types, so adding a dataset never touches
the encoding or the shard writing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

_KEY_PLAIN = re.compile(r"[A-Za-z0-9_-]")
_KEY_ESCAPE = re.compile(r"~([0-9A-F]{2})")


def _key_part(part: object) -> str:
    """Characters other than ASCII letters, digits, '_' and '-' as '~XX' per UTF-8 byte ('~' itself too)."""
    return "".join(c if _KEY_PLAIN.fullmatch(c) else "".join(f"~{b:02X}" for b in c.encode()) for c in str(part))


def make_key(*parts: object) -> str:
    """A WebDataset key: stable, without '.', '/' or white space (webdataset and DALI split member names
    at the first '.'; DALI's index separates fields by spaces), joined by '_'. Each part is kept as it is
    when it is plain (letters, digits, '_', '-'), else escaped, so distinct ids give distinct keys
    (`x.y` -> `x~2Ey`, `x-y` stays) and `id_of_key` reverses a one-part key."""
    return "_".join(_key_part(p) for p in parts)


def id_of_key(key: str) -> str:
    """The id a one-part key was made from (`make_key(id)`)."""
    pieces = _KEY_ESCAPE.split(key)          # text, hex, text, hex, ..., text
    return b"".join(bytes([int(p, 16)]) if i % 2 else p.encode() for i, p in enumerate(pieces)).decode()


def unsafe_path_part(value: str) -> str | None:
    """Why `value` (an id the owners' files give) cannot name a file inside the dataset root, or None:
    empty, '.' or '..', a separator, an absolute or drive path, a NUL or another control character."""
    if not value or value.strip() in (".", ".."):
        return "empty, '.' or '..'"
    if "/" in value or "\\" in value or PurePosixPath(value).is_absolute() or PureWindowsPath(value).drive:
        return "contains a path separator or names an absolute path"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "contains a control character"
    return None


@dataclass(frozen=True)
class ClipRecord:
    """One clip to write: where its frames are and what it is labelled.

    `video` is a video file (whole clip, or cut by `start_sec`/`stop_sec` when those are set);
    `frames_dir` a folder of numbered JPEGs (or a tar of them) read from `start_frame` to `end_frame`,
    1-based inclusive, in the owners' numbering. `source_fps` is the rate those frames were taken at.
    `labels` maps head name -> class id (None on unlabelled test splits); `meta` is copied into the
    sample's JSON as it is (participant, subject, narration, ...).
    """

    key: str
    dataset: str
    split: str
    id: str
    labels: dict[str, int | None]
    source_fps: float
    video: Path | None = None
    frames_dir: Path | None = None
    frame_pattern: str = "{:05d}.jpg"
    start_frame: int | None = None
    end_frame: int | None = None
    start_sec: float | None = None
    stop_sec: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> Path:
        return self.video if self.video is not None else self.frames_dir  # type: ignore[return-value]


@dataclass(frozen=True)
class Reject:
    """An input that will not be written, and why (one line of rejects.jsonl)."""

    dataset: str
    split: str
    id: str
    source: str
    reason: str

    def as_json(self) -> dict[str, str]:
        return {"dataset": self.dataset, "split": self.split, "id": self.id,
                "source": self.source, "reason": self.reason}


@dataclass
class DatasetIndex:
    """A parsed dataset: the clips per split, the rows turned away, and the class maps for the manifest.

    `heads` is head name -> class count; `classes` head name -> class names (EPIC adds `action` ->
    [verb, noun] pairs); `extra` goes into the manifest as is (e.g. sthv1's `label_convention`).
    """

    dataset: str
    records: dict[str, list[ClipRecord]]
    rejects: list[Reject]
    heads: dict[str, int]
    classes: dict[str, list[Any]]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return sum(len(v) for v in self.records.values()) + len(self.rejects)


def records_by_split(records: list[ClipRecord], rejects: list[Reject],
                     splits: tuple[str, ...]) -> dict[str, list[ClipRecord]]:
    """split -> its records (every one of `splits`, empty ones too), keeping the first record of each
    key; later ones become rejects that name the first one's source."""
    seen: dict[str, ClipRecord] = {}
    kept: dict[str, list[ClipRecord]] = {s: [] for s in splits}
    for rec in records:
        first = seen.get(rec.key)
        if first is None:
            seen[rec.key] = rec
            kept[rec.split].append(rec)
            continue
        reason = (f"duplicate id {rec.id!r} (first seen in split {first.split!r})" if first.id == rec.id else
                  f"key {rec.key!r} of id {rec.id!r} is already the key of id {first.id!r} (split {first.split!r})")
        rejects.append(Reject(rec.dataset, rec.split, rec.id, str(rec.meta.get("annotation", rec.source)), reason))
    return kept
