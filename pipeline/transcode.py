"""Encoding clips for fast random access, with PyAV (libx264, libvpx-vp9, mjpeg).

Every clip is written at a constant frame rate with a short fixed keyframe interval, no B-frames (and
no VP9 alt-ref/lag frames, their equivalent), yuv420p and no audio, so that a decoder seeking to any
frame decodes at most `keyframe_interval` frames, and DALI's CPU decoder (VP9, MJPEG) or NVDEC (H.264)
reads it from memory. (DALI 2.4's CPU decoder does not seek: it decodes from the first frame to the last
one asked for, `benchmarks/dali_decode_position.py`; neither does the reference loader.)
"""
from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

CODECS = ("h264", "vp9", "mjpeg", "copy")
VIDEO_EXT = {"h264": "mp4", "vp9": "webm", "mjpeg": "avi", "copy": "webm"}
# (PyAV codec, container, pixel format). MJPEG's full-range yuvj420p is libavcodec's name for 4:2:0
# JPEG; it is the same sampling as yuv420p.
_ENCODERS = {
    "h264": ("libx264", "mp4", "yuv420p"),
    "vp9": ("libvpx-vp9", "webm", "yuv420p"),
    "mjpeg": ("mjpeg", "avi", "yuvj420p"),
}
COPYABLE_CODECS = ("vp8", "vp9")


class SourceError(Exception):
    """A source cannot give the frames asked for; the message is the reject reason."""


@dataclass(frozen=True)
class EncodeSettings:
    codec: str = "vp9"
    short_side: int = 256          # downscale so the short side is at most this; 0 keeps the size
    fps: float | None = None       # resample to this rate; None keeps the source rate
    keyframe_interval: int = 8
    quality: int | None = None     # crf (h264/vp9) or qscale (mjpeg); None = the codec default below

    def encoder_options(self) -> dict[str, str]:
        gop = str(self.keyframe_interval)
        if self.codec == "h264":
            crf = 23 if self.quality is None else self.quality
            return {"preset": "veryfast", "crf": str(crf),
                    "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"}
        if self.codec == "vp9":
            crf = 32 if self.quality is None else self.quality
            return {"deadline": "realtime", "cpu-used": "8", "crf": str(crf), "b": "0", "g": gop,
                    "keyint_min": gop, "lag-in-frames": "0", "auto-alt-ref": "0"}
        if self.codec == "mjpeg":
            return {"qscale": str(3 if self.quality is None else self.quality)}
        raise ValueError(f"no encoder for codec {self.codec!r}")


def rate_fraction(fps: float | Fraction) -> Fraction:
    """59.94 -> 60000/1001; 12.0 -> 12."""
    return Fraction(fps).limit_denominator(1001)


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Downscale (never up) so the short side is `short_side`; both sides even, as 4:2:0 needs."""
    scale = 1.0
    if short_side and min(width, height) > short_side:
        scale = short_side / min(width, height)
    w, h = max(2, round(width * scale)), max(2, round(height * scale))
    return w - w % 2, h - h % 2


class Resampler:
    """How many times each source frame appears at the output rate: output frame k shows the source
    frame nearest to its time, round(k * src / dst). Exact arithmetic, so reruns cut identically."""

    def __init__(self, src: Fraction, dst: Fraction):
        self.ratio = src / dst
        self.next_out = 0

    def repeats(self, source_index: int) -> int:
        n = 0
        while _round_half_up(self.next_out * self.ratio) == source_index:
            self.next_out += 1
            n += 1
        return n


def _round_half_up(x: Fraction) -> int:
    return int(x + Fraction(1, 2))


class ClipEncoder:
    """Frames in (already at the output size), one encoded in-memory video out."""

    def __init__(self, settings: EncodeSettings, source_rate: Fraction, width: int, height: int):
        codec, container, self.pix_fmt = _ENCODERS[settings.codec]
        self.rate = rate_fraction(settings.fps) if settings.fps else rate_fraction(source_rate)
        self.resampler = Resampler(rate_fraction(source_rate), self.rate)
        self.width, self.height = width, height
        self.buffer = io.BytesIO()
        # bitexact: no random Matroska UIDs or version strings, so a rerun writes the same bytes
        self.container = av.open(self.buffer, mode="w", format=container, options={"fflags": "+bitexact"})
        self.stream = self.container.add_stream(codec, rate=self.rate)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, self.pix_fmt
        self.stream.codec_context.thread_count = 1   # the process pool owns the cores
        self.stream.options = settings.encoder_options()
        self.time_base = Fraction(1) / self.rate
        self.sources_seen = 0
        self.num_frames = 0

    def add(self, frame: av.VideoFrame) -> None:
        """The next source frame of the clip; repeated or dropped as the output rate needs."""
        repeats = self.resampler.repeats(self.sources_seen)
        self.sources_seen += 1
        if repeats == 0:
            return
        if frame.format.name != self.pix_fmt:
            frame = frame.reformat(format=self.pix_fmt)
        frame.time_base = self.time_base    # else PyAV rescales our pts from the source's time base
        for _ in range(repeats):
            frame.pts = self.num_frames
            self.num_frames += 1
            for packet in self.stream.encode(frame):
                self.container.mux(packet)

    def finish(self) -> bytes:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        return self.buffer.getvalue()

    def abort(self) -> None:
        try:
            self.container.close()
        except av.FFmpegError:
            pass


def resize(frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
    return frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA")


@dataclass(frozen=True)
class VideoInfo:
    rate: Fraction
    width: int
    height: int
    codec: str
    duration_sec: float | None
    has_audio: bool
    frame_count: int | None = None     # from the container header where it has one (MP4, AVI; not WebM)


def open_video(path: Path) -> tuple[av.container.InputContainer, VideoInfo]:
    """Open a video file, or a SourceError saying why it cannot be (missing, empty, undecodable)."""
    if not path.is_file():
        raise SourceError(f"missing video: {path}")
    if path.stat().st_size == 0:
        raise SourceError(f"empty video file: {path}")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise SourceError(f"undecodable video ({type(exc).__name__}: {exc})") from None
    if not container.streams.video:
        container.close()
        raise SourceError(f"no video stream in {path}")
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1   # the process pool owns the cores
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        container.close()
        raise SourceError(f"no frame rate in {path}")
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None and not container.streams.audio:   # else it may be the audio's
        duration = container.duration / av.time_base
    info = VideoInfo(Fraction(rate), stream.codec_context.width, stream.codec_context.height,
                     stream.codec_context.name, duration, bool(container.streams.audio), stream.frames or None)
    return container, info


def decode_frames(container: av.container.InputContainer, path: Path,
                  seek_to: float | None = None) -> Iterator[tuple[float, av.VideoFrame]]:
    """(time in seconds, frame) for every frame, in presentation order, from the start or from the
    keyframe at or before `seek_to` seconds; SourceError on corrupt data."""
    stream = container.streams.video[0]
    try:
        if seek_to is not None:
            container.seek(int(seek_to / stream.time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            yield (float(frame.time) if frame.time is not None else 0.0), frame
    except av.FFmpegError as exc:
        raise SourceError(f"truncated or corrupt video {path} ({type(exc).__name__}: {exc})") from None


def check_complete(info: VideoInfo, frames_decoded: int, last_time: float | None, path: Path,
                   from_start: bool = True) -> None:
    """A truncated file decodes without error but stops early. Its last frame must come within half a frame
    of where the header says the video ends, by its duration or, where the container records one, its
    frame count (an AVI's duration shrinks with the file; its frame count does not): the timestamps of a
    constant-rate clip are exact multiples of the frame period, so one missing frame is caught. Decoded
    `from_start` (no seek), there must also be as many frames as the header counts: a frame lost from the
    middle of the decode order (a B-frame) leaves the last timestamp as it was."""
    if frames_decoded == 0:
        raise SourceError(f"truncated or corrupt video: no decodable frames in {path}")
    period = 1.0 / float(info.rate)
    ends = [end for end in (info.duration_sec, info.frame_count and info.frame_count * period) if end]
    if ends and last_time is not None and last_time < max(ends) - period - period / 2:
        raise SourceError(f"truncated video {path}: the header says it ends at {max(ends):.3f} s, its frames "
                          f"stop at {last_time:.3f} s (about {round((max(ends) - period - last_time) / period)} "
                          f"frame(s) missing)")
    if from_start and info.frame_count and frames_decoded < info.frame_count:
        raise SourceError(f"truncated or corrupt video {path}: {frames_decoded} frames decode, the header "
                          f"counts {info.frame_count}")


_JPEG = av.CodecContext.create("mjpeg", "r")


def decode_jpeg(data: bytes, name: str) -> av.VideoFrame:
    try:
        frames = _JPEG.decode(av.Packet(data))
    except av.FFmpegError as exc:
        raise SourceError(f"undecodable frame {name} ({exc})") from None
    if not frames:
        raise SourceError(f"undecodable frame {name}")
    return frames[0]


def frames_to_array(data: bytes, max_frames: int | None = None) -> np.ndarray:
    """Decode an encoded clip to (T, H, W, 3) uint8 RGB; `verify` and the tests use it."""
    out = []
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24"))
            if max_frames and len(out) >= max_frames:
                break
    return np.stack(out) if out else np.zeros((0, 0, 0, 3), np.uint8)
