"""One source (a video file or a frame folder) -> its clips, encoded, in the work folder.

This is the unit the process pool runs. A source is read once however many clips it yields: a long
EPIC video is decoded front to back (seeking over long unannotated stretches, stopping after the last
segment) while every action segment open at that moment receives the frame.
Each clip ends as `<key>.<ext>` + `<key>.json`, or `<key>.reject.json`, each written under a temporary
name and renamed, so a killed run leaves only whole files and a rerun skips what is done.
"""
from __future__ import annotations

import json
import math
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import av

from pipeline.atomic import atomic_write
from pipeline.datasets.records import ClipRecord
from pipeline.transcode import (COPYABLE_CODECS, VIDEO_EXT, ClipEncoder, EncodeSettings, SourceError, VideoInfo,
                                check_complete, decode_frames, decode_jpeg, open_video, output_size, rate_fraction,
                                resize)


@dataclass(frozen=True)
class ClipOutcome:
    key: str
    split: str
    written: bool
    bytes: int = 0
    reason: str | None = None


def clip_dir(work_dir: Path, split: str) -> Path:
    return work_dir / "clips" / split


def meta_path(work_dir: Path, rec: ClipRecord) -> Path:
    return clip_dir(work_dir, rec.split) / f"{rec.key}.json"


def reject_path(work_dir: Path, rec: ClipRecord) -> Path:
    return clip_dir(work_dir, rec.split) / f"{rec.key}.reject.json"


def is_done(work_dir: Path, rec: ClipRecord) -> bool:
    return meta_path(work_dir, rec).is_file() or reject_path(work_dir, rec).is_file()


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def sample_json(rec: ClipRecord, root: Path, codec: str, num_frames: int, fps: float, width: int,
                height: int, start_frame: int | None, end_frame: int | None) -> dict[str, Any]:
    """The `<key>.json` of docs/ARCHITECTURE.md §1."""
    meta: dict[str, Any] = {
        "key": rec.key, "dataset": rec.dataset, "split": rec.split, "id": rec.id,
        "label": rec.labels.get("label"), "num_frames": num_frames, "fps": fps,
        "width": width, "height": height, "codec": codec,
        "source": {"file": _relative(rec.source, root), "start_frame": start_frame, "end_frame": end_frame,
                   "start_sec": rec.start_sec, "stop_sec": rec.stop_sec},
    }
    for head, value in rec.labels.items():
        if head != "label":
            meta[f"{head}_class"] = value
    meta.update(rec.meta)
    return meta


class _Writer:
    """Finishes clips into the work folder and keeps the outcome list."""

    def __init__(self, work_dir: Path, root: Path):
        self.work_dir, self.root = work_dir, root
        self.outcomes: list[ClipOutcome] = []

    def written(self, rec: ClipRecord, data: bytes, codec: str, meta: dict[str, Any]) -> None:
        folder = clip_dir(self.work_dir, rec.split)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / f"{rec.key}.{VIDEO_EXT[codec]}", data)
        meta["video_ext"] = VIDEO_EXT[codec]
        atomic_write(meta_path(self.work_dir, rec), json.dumps(meta, sort_keys=True).encode())
        self.outcomes.append(ClipOutcome(rec.key, rec.split, True, len(data)))

    def rejected(self, rec: ClipRecord, reason: str) -> None:
        clip_dir(self.work_dir, rec.split).mkdir(parents=True, exist_ok=True)
        line = {"dataset": rec.dataset, "split": rec.split, "id": rec.id, "key": rec.key,
                "source": _relative(rec.source, self.root), "reason": reason}
        atomic_write(reject_path(self.work_dir, rec), json.dumps(line, sort_keys=True).encode())
        self.outcomes.append(ClipOutcome(rec.key, rec.split, False, reason=reason))


def process_source(records: list[ClipRecord], root: Path, settings: EncodeSettings,
                   work_dir: Path) -> list[ClipOutcome]:
    """Encode every clip of one source; bad input becomes reject files, never an exception."""
    writer = _Writer(work_dir, root)
    todo = [r for r in records if not is_done(work_dir, r)]
    if not todo:
        return []
    try:
        if todo[0].video is not None:
            _cut_video(todo, settings, writer)
        else:
            store = _FrameStore(todo[0].frames_dir)
            try:
                for rec in todo:
                    _encode_frames(rec, store, settings, writer)
            finally:
                store.close()
    except (SourceError, av.FFmpegError) as exc:
        reason = str(exc) if isinstance(exc, SourceError) else f"undecodable source ({type(exc).__name__}: {exc})"
        done = {o.key for o in writer.outcomes}
        for rec in todo:
            if rec.key not in done:
                writer.rejected(rec, reason)
    return writer.outcomes


def _nominal_frame(t: float, fps: float) -> int:
    """1-based frame number of the owners' numbering at time t (frame 1 shows t = 0)."""
    return math.floor(t * fps + 1e-6) + 1


# A gap between segments longer than this is skipped by seeking instead of decoded (EPIC videos run
# for up to an hour, with stretches nobody annotated).
SEEK_GAP_SEC = 10.0


def _cut_video(records: list[ClipRecord], settings: EncodeSettings, writer: _Writer) -> None:
    """Decode the video once, front to back; each frame goes to every clip whose span holds it."""
    path = records[0].video
    container, info = open_video(path)
    with container:
        if settings.codec == "copy":
            return _copy_or_transcode(records, container, info, settings, writer)
        width, height = output_size(info.width, info.height, settings.short_side)
        fps = records[0].source_fps
        pending = sorted(records, key=lambda r: (r.start_frame or 1, r.key))
        active: list[tuple[ClipRecord, ClipEncoder, list[int]]] = []
        by_time = records[0].start_frame is not None   # a span in the owners' numbering, else whole video
        decoded, last_time, last_number, sought = 0, None, 0, 0.0
        frames = decode_frames(container, path)
        while frames is not None:
            source, frames = frames, None
            for t, frame in source:
                decoded, last_time = decoded + 1, t
                number = _nominal_frame(t, fps) if by_time else decoded
                if number <= last_number:   # a source faster than its nominal numbering, or a seek's lead-in
                    continue
                last_number = number
                while pending and (pending[0].start_frame or 1) <= number:
                    rec = pending.pop(0)
                    active.append((rec, ClipEncoder(settings, info.rate, width, height), []))
                if not active:
                    if not pending:          # every clip is done: the rest of the video is not needed
                        break
                    target = (pending[0].start_frame - 1.5) / fps if by_time else 0.0
                    if target - t > SEEK_GAP_SEC and target > sought:
                        sought, frames = target, decode_frames(container, path, seek_to=target)
                        source.close()
                        break
                    continue
                small = resize(frame, width, height)
                still = []
                for rec, enc, span in active:
                    if rec.end_frame is not None and number > rec.end_frame:
                        _finish(rec, enc, span, settings.codec, writer)
                        continue
                    enc.add(small)
                    span.append(number)
                    still.append((rec, enc, span))
                active = still
        if active or pending:
            check_complete(info, decoded, last_time, path, from_start=not sought)
        for rec, enc, span in active:
            if rec.end_frame is None or rec.end_frame <= last_number:
                _finish(rec, enc, span, settings.codec, writer)
            else:
                enc.abort()
                writer.rejected(rec, f"span {rec.start_frame}..{rec.end_frame} outside the video "
                                     f"(last frame {last_number})")
        for rec in pending:
            writer.rejected(rec, f"span {rec.start_frame}..{rec.end_frame} outside the video "
                                 f"(last frame {last_number})")


def _finish(rec: ClipRecord, enc: ClipEncoder, span: list[int], codec: str, writer: _Writer) -> None:
    data = enc.finish()
    if enc.num_frames == 0:
        writer.rejected(rec, f"no frames in span {rec.start_frame}..{rec.end_frame}")
        return
    meta = sample_json(rec, writer.root, codec, enc.num_frames, float(enc.rate), enc.width, enc.height,
                       span[0], span[-1])
    writer.written(rec, data, codec, meta)


def _copy_or_transcode(records: list[ClipRecord], container: av.container.InputContainer, info: VideoInfo,
                       settings: EncodeSettings, writer: _Writer) -> None:
    """`--codec copy`: keep the source bytes when they already are VP8/VP9 without audio (sthv2 webm);
    otherwise transcode that clip to VP9 and say so in its JSON. What is kept is decoded first, every
    frame, and held to the same completeness check as a transcode: a damaged source is rejected, not
    copied, and the JSON's frame count is the count that decodes."""
    (rec,) = records
    if info.codec in COPYABLE_CODECS and not info.has_audio:
        decoded, last_time = 0, None
        for last_time, _ in decode_frames(container, rec.video):
            decoded += 1
        check_complete(info, decoded, last_time, rec.video)
        meta = sample_json(rec, writer.root, "copy", decoded, float(info.rate), info.width, info.height, 1, decoded)
        meta["codec"] = info.codec
        writer.written(rec, rec.video.read_bytes(), "copy", meta)
        return None
    container.close()
    return _cut_video(records, replace(settings, codec="vp9"), writer)


def _frame_names(rec: ClipRecord) -> list[str]:
    """The span's file names; a record without a span takes frames 1..N, N the highest number present."""
    if rec.start_frame is not None:
        return [rec.frame_pattern.format(i) for i in range(rec.start_frame, rec.end_frame + 1)]
    last = 0
    if rec.frames_dir.is_dir():
        suffix = Path(rec.frame_pattern.format(1)).suffix
        numbers = [int(p.stem) for p in rec.frames_dir.iterdir() if p.suffix == suffix and p.stem.isdigit()]
        last = max(numbers, default=0)
    if last == 0:
        raise SourceError(f"missing or empty frame folder: {rec.frames_dir}")
    return [rec.frame_pattern.format(i) for i in range(1, last + 1)]


class _FrameStore:
    """Numbered JPEGs from a folder or from a tar of them; a tar's member list is read once per source
    (an EPIC rgb_frames tar holds a whole video, and every segment of that video reads from it)."""

    def __init__(self, src: Path):
        self.src = src
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        if src.is_file() and tarfile.is_tarfile(src):
            self.tar = tarfile.open(src)
            self.members = {Path(m.name).name: m for m in self.tar.getmembers() if m.isfile()}

    def read(self, names: list[str]) -> list[tuple[str, bytes]]:
        """The named frames' bytes; SourceError naming the missing ones."""
        if self.tar is not None:
            missing = [n for n in names if n not in self.members]
            if missing:
                raise SourceError(_missing_message(self.src, missing, len(names)))
            return [(n, self.tar.extractfile(self.members[n]).read()) for n in names]
        if not self.src.is_dir():
            raise SourceError(f"missing frame folder: {self.src}")
        missing = [n for n in names if not (self.src / n).is_file()]
        if missing:
            raise SourceError(_missing_message(self.src, missing, len(names)))
        return [(n, (self.src / n).read_bytes()) for n in names]

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()


def _missing_message(src: Path, missing: list[str], total: int) -> str:
    shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    return f"{len(missing)} of {total} frames missing from {src}: {shown}"


def _encode_frames(rec: ClipRecord, store: _FrameStore, settings: EncodeSettings, writer: _Writer) -> None:
    """A clip from numbered JPEGs (sthv1, EgoGesture, EPIC rgb_frames)."""
    try:
        frames = store.read(_frame_names(rec))
    except SourceError as exc:
        writer.rejected(rec, str(exc))
        return
    enc = None
    try:
        for name, data in frames:
            frame = decode_jpeg(data, f"{rec.frames_dir}/{name}")
            if enc is None:
                width, height = output_size(frame.width, frame.height, settings.short_side)
                enc = ClipEncoder(settings, rate_fraction(rec.source_fps), width, height)
            enc.add(resize(frame, enc.width, enc.height))
    except SourceError as exc:
        if enc is not None:
            enc.abort()
        writer.rejected(rec, str(exc))
        return
    _finish(rec, enc, [rec.start_frame or 1, rec.end_frame or len(frames)], settings.codec, writer)

