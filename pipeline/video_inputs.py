"""Videos and frame folders that are not in shards (a user's own files), read the way shard samples are.

An input is a video file of any container and codec PyAV opens, or a folder of numbered JPEG frames (the
Something-Something V1 layout `<id>/00001.jpg`, also EgoGesture's and EPIC's `rgb_frames`). `probe` reads
what the sample plan needs (frame count, size), as the shard tool records it in a sample's JSON: a video's
frames are its packets (`pipeline/transcode.py`'s `packet_count`, what `--codec copy` records), a folder's
are its numbered files. `read_views` decodes and cuts the plan's views with the reference loader's own
functions (`pipeline/reference_loader.py`), so a clip read from its source file and the same clip read from
copied shard bytes give the same pixels; JPEG frames first go through the shard tool's own conversion to
yuv420p, as they do before they are encoded into shards.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch

from pipeline.errors import DataError
from pipeline.plan import View, make_view, views_per_clip
from pipeline.reference_loader import cut_view, decode_frames, frame_to_rgb
from pipeline.transcode import SourceError, check_complete, decode_jpeg, open_video, resize

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ts", ".ogv", ".flv",
                  ".wmv", ".3gp")
_FRAME_FILE = re.compile(r"^(.*?)(\d+)\.jpe?g$", re.IGNORECASE)
FRAMES = "frames"      # InputClip.kind of a JPEG frame folder; a video's kind is "video"
_JPEG_LOCK = threading.Lock()     # transcode.decode_jpeg keeps one libavcodec context: one thread at a time


@dataclass(frozen=True)
class InputClip:
    """One input, probed: what the plan needs to cut its views, and where its pixels are."""

    path: Path
    kind: str                        # "video" | FRAMES
    codec: str                       # libavcodec's name of the video codec; "jpeg" for a frame folder
    num_frames: int
    width: int
    height: int
    frame_files: tuple[Path, ...] = field(default=(), repr=False)   # a frame folder's files, in order


@dataclass
class FoundInputs:
    """The inputs named on a command line, expanded: what to read, what cannot be, what was passed over."""

    inputs: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)    # (path, why it yields no input)
    ignored: list[Path] = field(default_factory=list)               # files in folders that are not videos


def _numbered_jpegs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and _FRAME_FILE.match(p.name)]


def _walk(folder: Path, found: FoundInputs) -> None:
    """Folders holding numbered JPEGs are frame-folder inputs; files with a video suffix are video inputs."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        found.failed.append((folder, f"cannot list the folder ({e.strerror or e})"))
        return
    if any(p.is_file() and _FRAME_FILE.match(p.name) for p in entries):
        found.inputs.append(folder)
    for entry in entries:
        if entry.is_dir():
            _walk(entry, found)
        elif entry.suffix.lower() in VIDEO_SUFFIXES:
            found.inputs.append(entry)
        elif not _FRAME_FILE.match(entry.name):
            found.ignored.append(entry)


def find_inputs(paths: Sequence[str | Path]) -> FoundInputs:
    """Each path as given: a file is an input whatever its suffix; a folder is searched recursively. A path
    that yields nothing is listed with the reason; each input is kept once."""
    found = FoundInputs()
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found.inputs.append(path)
        elif path.is_dir():
            before, ignored = len(found.inputs), len(found.ignored)
            _walk(path, found)
            if len(found.inputs) == before:
                found.failed.append((path, f"no video files ({', '.join(VIDEO_SUFFIXES)}) or folders of "
                                           f"numbered JPEG frames in it ({len(found.ignored) - ignored} other "
                                           f"files)"))
        else:
            found.failed.append((path, "no such file or folder"))
    seen: set[Path] = set()
    unique = []
    for path in found.inputs:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    found.inputs = unique
    return found


# ----------------------------------------------------------------------------------------------- probe


def _probe_video(path: Path) -> InputClip:
    try:
        container, info = open_video(path)
    except SourceError as e:
        raise DataError(str(e)) from None
    packets, last_time = 0, None
    with container:
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                if packet.size:
                    packets += 1
                    if packet.pts is not None and packet.time_base is not None:
                        t = float(packet.pts * packet.time_base)
                        last_time = t if last_time is None else max(last_time, t)
        except av.FFmpegError as e:
            raise DataError(f"cannot read the video stream ({type(e).__name__}: {e})") from None
    if packets == 0:
        raise DataError("no video frames in the file")
    try:
        check_complete(info, packets, last_time, path)   # a file cut short: its header says it is longer
    except SourceError as e:
        raise DataError(str(e)) from None
    return InputClip(path, "video", info.codec, packets, info.width, info.height)


def _probe_frames(folder: Path) -> InputClip:
    """Frames numbered without gaps (as the shard tool requires of a frame folder), any start number."""
    numbered: dict[int, Path] = {}
    for p in _numbered_jpegs(folder):
        n = int(_FRAME_FILE.match(p.name).group(2))
        if n in numbered:
            raise DataError(f"two frames numbered {n}: {numbered[n].name} and {p.name}")
        numbered[n] = p
    if not numbered:
        raise DataError("no numbered JPEG frames in the folder")
    first, last = min(numbered), max(numbered)
    missing = [n for n in range(first, last + 1) if n not in numbered]
    if missing:
        shown = ", ".join(map(str, missing[:3])) + (", ..." if len(missing) > 3 else "")
        raise DataError(f"{len(missing)} of {last - first + 1} frames missing between {numbered[first].name} and "
                        f"{numbered[last].name} (numbers {shown})")
    head = _read_jpeg(numbered[first])
    return InputClip(folder, FRAMES, "jpeg", len(numbered), head.width, head.height,
                     tuple(numbered[n] for n in range(first, last + 1)))


def _read_jpeg(path: Path) -> av.VideoFrame:
    data = path.read_bytes()
    try:
        with _JPEG_LOCK:
            return decode_jpeg(data, str(path))
    except SourceError as e:
        raise DataError(str(e)) from None


def probe(path: Path) -> InputClip:
    """What the plan needs of one input; a DataError saying why it cannot be read."""
    return _probe_frames(path) if path.is_dir() else _probe_video(path)


# ----------------------------------------------------------------------------------------------- views


def plan_views(clip: InputClip, *, mode: str, num_segments: int, crop_size: int, scale_size: int) -> list[View]:
    """The plan's views of the clip under `mode` (val: one centre view; test: 2 clips x 3 crops)."""
    return [make_view(mode=mode, seed=0, key=str(clip.path), view_id=v, num_frames=clip.num_frames,
                      width=clip.width, height=clip.height, num_segments=num_segments, crop_size=crop_size,
                      scale_size=scale_size, flip=False)
            for v in range(views_per_clip(mode))]


def _as_sharded(frame: av.VideoFrame) -> av.VideoFrame:
    """A JPEG frame as the shard tool hands it to its encoder (`transcode.resize`: yuv420p), at its size.

    The shard tool's conversion keeps the JPEG's full-range values under the limited-range format, so every
    decoder then stretches them; the model learnt those pixels. Measured on sthv1-style folders against
    their VP9 shards: 1.4 levels apart on average with this step, 6 without it (docs/BENCHMARKS.md).
    """
    return resize(frame, frame.width, frame.height)


def _decode(clip: InputClip, indices: np.ndarray) -> np.ndarray:
    """uint8 (len(indices), H, W, 3) RGB of the clip's frames at `indices`."""
    if clip.kind == FRAMES:
        wanted = {int(i): frame_to_rgb(_as_sharded(_read_jpeg(clip.frame_files[int(i)]))) for i in np.unique(indices)}
        shapes = {f.shape for f in wanted.values()}
        if len(shapes) > 1:
            raise DataError(f"frames differ in size ({', '.join(map(str, sorted(shapes)))})")
        return np.stack([wanted[int(i)] for i in indices])
    return decode_frames(clip.path.read_bytes(), indices)


def read_views(clip: InputClip, views: list[View]) -> list[torch.Tensor]:
    """Each view as uint8 (T, H, W, 3), cut as the reference loader cuts it; the clip is decoded once."""
    indices = np.concatenate([v.frame_indices for v in views])
    frames = _decode(clip, indices)
    cuts, start = [], 0
    for view in views:
        cuts.append(cut_view(frames[start:start + len(view.frame_indices)], view))
        start += len(view.frame_indices)
    return cuts
