"""What every dataset parser hands to the sharder: clip records, rejected rows, and the class maps.

Parsers know the owners' layouts; the sharder knows only these types, so adding a dataset never touches
the encoding or the shard writing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def make_key(*parts: object) -> str:
    """A WebDataset key: stable, no '.', no '/', so webdataset and DALI split members the same way."""
    return "_".join(_KEY_UNSAFE.sub("-", str(p)).strip("-") for p in parts)


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
        else:
            rejects.append(Reject(rec.dataset, rec.split, rec.id, str(rec.meta.get("annotation", rec.source)),
                                  f"duplicate id {rec.id!r} (first seen in split {first.split!r})"))
    return kept
