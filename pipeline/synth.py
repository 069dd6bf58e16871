"""Write a small raw dataset in its owners' exact published layout, whose label is carried by motion.

    python pipeline/synth.py --dataset sthv2 --out RAW [--classes 4] [--clips-per-class 4] [--seed 0]

Each clip shows a textured background and a shape that moves along a class-specific path: one of 8
directions (so left/right and up/down are different classes, as in Something-Something and
EgoGesture), combined with one of 4 motion kinds (straight, out and back, slow, zigzag). A model that
sees only the frames can learn the label, and nothing else in a clip gives it away. Tests, the README
demo and the loader/trainer fixtures use this; the annotation files follow the real schemas.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

if __name__ == "__main__":   # run by path: keep pipeline/ off sys.path so `datasets` etc. cannot shadow libraries
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]

import av
import numpy as np

from pipeline.errors import ConfigError, W3Error
from pipeline.transcode import ClipEncoder, EncodeSettings

DIRECTIONS = ("right", "down-right", "down", "down-left", "left", "up-left", "up", "up-right")
MOTIONS = ("", " and back", " slowly", " in a zigzag")
MAX_CLASSES = len(DIRECTIONS) * len(MOTIONS)


@dataclass(frozen=True)
class SynthSpec:
    classes: int = 4
    clips_per_class: int = 4
    seed: int = 0
    num_frames: int = 48
    width: int = 160
    height: int = 128


def class_phrase(label: int) -> str:
    """'right', 'left and back', ...: the motion of class `label`, used in every dataset's class names."""
    return DIRECTIONS[label % len(DIRECTIONS)] + MOTIONS[label // len(DIRECTIONS)]


def split_of(j: int) -> str:
    """The j-th clip of a class: 1 in 4 to val, 1 in 4 to test, the rest to train."""
    return {1: "val", 3: "test"}.get(j % 4, "train")


def _path_offset(label: int, t: float) -> np.ndarray:
    """Displacement (in units of the travel length) at time t in [0, 1] for class `label`."""
    angle = 2 * math.pi * (label % len(DIRECTIONS)) / len(DIRECTIONS)
    d = np.array([math.cos(angle), math.sin(angle)])
    kind = label // len(DIRECTIONS)
    if kind == 1:                       # out and back
        return d * (1 - abs(2 * t - 1)) - d * 0.5
    if kind == 2:                       # half the distance
        return d * (t - 0.5) * 0.5
    if kind == 3:                       # zigzag across the direction of travel
        normal = np.array([-d[1], d[0]])
        return d * (t - 0.5) + normal * 0.15 * math.sin(6 * math.pi * t)
    return d * (t - 0.5)


def render_clip(label: int, num_frames: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """(T, H, W, 3) uint8: a static random texture and a shape following class `label`'s path."""
    coarse = rng.integers(40, 200, size=(height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
    bg = np.kron(coarse, np.ones((16, 16, 1)))[:height, :width]
    bg += rng.normal(0, 6, size=bg.shape)
    side = max(6, min(width, height) // 5)
    travel = 0.55 * min(width, height)
    centre = np.array([width / 2, height / 2]) + rng.uniform(-0.08, 0.08, 2) * min(width, height)
    colour = rng.integers(0, 256, 3)
    colour[rng.integers(3)] = 255       # always bright in one channel, so it stands out
    ys, xs = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        cx, cy = centre + travel * _path_offset(label, i / max(1, num_frames - 1))
        mask = (np.abs(xs - cx) <= side / 2) & (np.abs(ys - cy) <= side / 2)
        frame = bg.copy()
        frame[mask] = colour
        frames[i] = np.clip(frame, 0, 255)
    return frames


def write_video(path: Path, frames: np.ndarray, fps: float, codec: str, keyframe_interval: int = 48) -> None:
    """Frames -> a video file as a camera or the owners' export would have written it."""
    settings = EncodeSettings(codec=codec, short_side=0, keyframe_interval=keyframe_interval)
    enc = ClipEncoder(settings, Fraction(fps).limit_denominator(1001), frames.shape[2], frames.shape[1])
    for frame in frames:
        enc.add(av.VideoFrame.from_ndarray(frame, format="rgb24"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(enc.finish())


_JPEG_ENCODERS: dict[tuple[int, int], av.CodecContext] = {}


def jpeg_bytes(frame: np.ndarray) -> bytes:
    key = (frame.shape[1], frame.shape[0])
    ctx = _JPEG_ENCODERS.get(key)
    if ctx is None:
        ctx = av.CodecContext.create("mjpeg", "w")
        ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = key[0], key[1], "yuvj420p", Fraction(1, 25)
        _JPEG_ENCODERS[key] = ctx
    packets = ctx.encode(av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuvj420p"))
    return b"".join(bytes(p) for p in packets)


def write_frames(folder: Path, frames: np.ndarray, pattern: str, first: int = 1) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        (folder / pattern.format(first + i)).write_bytes(jpeg_bytes(frame))


def _clips(spec: SynthSpec):
    """(label, j, rng) for every clip, in a fixed order, each with its own random stream."""
    for label in range(spec.classes):
        for j in range(spec.clips_per_class):
            yield label, j, np.random.default_rng([spec.seed, label, j])


def _write_json_crlf(path: Path, items) -> None:
    """The 20BN files: one JSON object per line, CRLF line endings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(items, dict):
        body = ",\r\n".join(f" {json.dumps(k)}:{json.dumps(v)}" for k, v in items.items())
        path.write_bytes(("{\r\n" + body + "\r\n}\r\n").encode())
    else:
        body = ",\r\n".join(json.dumps(it, separators=(",", ":")) for it in items)
        path.write_bytes(("[\r\n" + body + "\r\n]\r\n").encode())


def synth_sthv2(out: Path, spec: SynthSpec) -> None:
    """`20bn-something-something-v2/<id>.webm` (VP9, 12 fps) + `labels/something-something-v2-*.json`."""
    names = [f"Moving something {class_phrase(c)}" for c in range(spec.classes)]
    _write_json_crlf(out / "labels" / "something-something-v2-labels.json",
                     {name: str(i) for i, name in enumerate(names)})
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for label, j, rng in _clips(spec):
        vid = str(1000 + label * spec.clips_per_class + j)
        write_video(out / "20bn-something-something-v2" / f"{vid}.webm",
                    render_clip(label, spec.num_frames, spec.width, spec.height, rng), 12, "vp9")
        thing = ("box", "cup", "pen", "book")[j % 4]
        template = names[label].replace("something", "[something]", 1)
        entry = {"id": vid, "label": names[label].replace("something", thing, 1).lower(),
                 "template": template, "placeholders": [thing]}
        split = split_of(j)
        splits[split].append(entry if split != "test" else {"id": vid})
    for split, fname in (("train", "train"), ("val", "validation"), ("test", "test")):
        _write_json_crlf(out / "labels" / f"something-something-v2-{fname}.json", splits[split])


WRITERS: dict[str, Callable[[Path, SynthSpec], None]] = {"sthv2": synth_sthv2}


def synthesize(dataset: str, out_dir: Path | str, classes: int = 4, clips_per_class: int = 4, seed: int = 0,
               num_frames: int = 48, width: int = 160, height: int = 128) -> Path:
    """Write the raw dataset `dataset` into `out_dir` (created) and return it."""
    from pipeline.datasets import canonical_name

    name = canonical_name(dataset)
    if name not in WRITERS:
        raise ConfigError(f"--dataset {dataset!r}: synth knows {', '.join(WRITERS)}")
    if not 1 <= classes <= MAX_CLASSES:
        raise ConfigError(f"--classes must be within 1..{MAX_CLASSES}, got {classes}")
    if clips_per_class < 1 or num_frames < 2 or width < 16 or height < 16:
        raise ConfigError("--clips-per-class >= 1, --num-frames >= 2 and a size of at least 16x16 are needed")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    WRITERS[name](out, SynthSpec(classes, clips_per_class, seed, num_frames, width, height))
    return out


def main(argv: list[str] | None = None) -> int:
    from pipeline.datasets import NAMES

    p = argparse.ArgumentParser(prog="pipeline/synth.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=NAMES)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--classes", type=int, default=4, help=f"1..{MAX_CLASSES} (default 4)")
    p.add_argument("--clips-per-class", type=int, default=4, help="default 4: 2 train, 1 val, 1 test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-frames", type=int, default=48)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=128)
    args = p.parse_args(argv)
    try:
        out = synthesize(args.dataset, args.out, args.classes, args.clips_per_class, args.seed,
                         args.num_frames, args.width, args.height)
    except W3Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.dataset} ({args.classes} classes x {args.clips_per_class} clips) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
