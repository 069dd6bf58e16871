"""Write a small raw dataset in its owners' exact published layout, whose label is carried by motion.

    python pipeline/synth.py --dataset sthv2 --out RAW [--classes 4] [--clips-per-class 4] [--seed 0]
                             [--task motion|order]

Task ``motion`` (the default): each clip shows a textured background and a shape that moves along a
class-specific path: one of 8 directions (so left/right and up/down are different classes, as in
Something-Something and EgoGesture), combined with one of 4 motion kinds (straight, out and back, slow,
zigzag). EPIC's verbs do not change when a clip is mirrored (the loader flips EPIC clips), so there the
classes use only the 5 directions that stay apart under mirroring, each clip going left or right at
random. A model that sees only the frames can learn the label, and nothing else in a clip gives it away.
Tests, the README demo and the loader/trainer fixtures use this; the annotation files follow the real
schemas.

Task ``order`` (sthv2 layout only): classes come in pairs whose clips differ only in the order of their
frames; class 2p+1's clip j is class 2p's clip j played backwards (left to right / right to left, down /
up, appearing / disappearing), so within a pair the bag of frames is identical and a frame-bag model
(TSN) is at chance by construction. The last two pairs need "what" (a red and a blue object cross: which
one goes right?) and "where" (two same-coloured objects cross: does the top one go right?), so attention
has something to find. The videos are all-intra VP9 (every frame a keyframe, coded independently of the
others), so the decoded bags are identical too, bit for bit; keep them so when sharding: ``--codec copy``
(or ``--keyframe-interval 1``). An inter-frame code would code a clip's first frame unlike the others,
and the MJPEG encoders' rate control remembers earlier frames: either would tell the two orders apart.
TSN's validation frames (segment centres) are symmetric under reversal when num_frames / num_segments is
odd.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from pipeline import cli  # first: keeps pipeline/ off sys.path when run by path

import av
import numpy as np

from pipeline.datasets import NAMES, canonical_name
from pipeline.datasets.epic import frame_of, nominal_fps, parse_timestamp
from pipeline.errors import ConfigError, DataError
from pipeline.transcode import ClipEncoder, EncodeSettings, rate_fraction

DIRECTIONS = ("right", "down-right", "down", "down-left", "left", "up-left", "up", "up-right")
MOTIONS = ("", " and back", " slowly", " in a zigzag")
MAX_CLASSES = len(DIRECTIONS) * len(MOTIONS)
# direction index -> name, for classes that must not change under a horizontal flip
MIRROR_FREE = {0: "sideways", 1: "down-sideways", 2: "down", 6: "up", 7: "up-sideways"}
MAX_MIRROR_FREE_CLASSES = len(MIRROR_FREE) * len(MOTIONS)
TASKS = ("motion", "order")
# Order task: class 2p and 2p+1 are the same clips played forwards and backwards (pair p).
ORDER_CLASSES = ("Pushing something from left to right", "Pushing something from right to left",
                 "Moving something down", "Moving something up",
                 "Something appearing", "Something disappearing",
                 "Red thing going right as blue thing goes left", "Red thing going left as blue thing goes right",
                 "Top thing going right as bottom thing goes left", "Top thing going left as bottom thing goes right")


@dataclass(frozen=True)
class SynthSpec:
    classes: int = 4
    clips_per_class: int = 4
    seed: int = 0
    num_frames: int = 48
    width: int = 160
    height: int = 128
    task: str = "motion"


def motion_of(label: int, mirror_free: bool = False) -> tuple[int, int]:
    """(direction index into DIRECTIONS, motion kind) of class `label`."""
    directions = list(MIRROR_FREE) if mirror_free else list(range(len(DIRECTIONS)))
    return directions[label % len(directions)], label // len(directions)


def class_phrase(label: int, mirror_free: bool = False) -> str:
    """'right', 'left and back', 'sideways slowly', ...: the motion of class `label`, for class names."""
    direction, kind = motion_of(label, mirror_free)
    return (MIRROR_FREE[direction] if mirror_free else DIRECTIONS[direction]) + MOTIONS[kind]


def split_of(j: int) -> str:
    """The j-th clip of a class: 1 in 4 to val, 1 in 4 to test, the rest to train."""
    return {1: "val", 3: "test"}.get(j % 4, "train")


def _path_offset(direction: int, kind: int, t: float) -> np.ndarray:
    """Displacement (in units of the travel length) at time t in [0, 1] of a motion."""
    angle = 2 * math.pi * direction / len(DIRECTIONS)
    d = np.array([math.cos(angle), math.sin(angle)])
    if kind == 1:                       # out and back
        return d * (1 - abs(2 * t - 1)) - d * 0.5
    if kind == 2:                       # half the distance
        return d * (t - 0.5) * 0.5
    if kind == 3:                       # zigzag across the direction of travel
        normal = np.array([-d[1], d[0]])
        return d * (t - 0.5) + normal * 0.15 * math.sin(6 * math.pi * t)
    return d * (t - 0.5)


def render_clip(label: int, num_frames: int, width: int, height: int, rng: np.random.Generator,
                colour: tuple[int, int, int] | None = None, mirror_free: bool = False) -> np.ndarray:
    """(T, H, W, 3) uint8: a static random texture and a shape following class `label`'s path
    (`mirror_free`: the MIRROR_FREE classes, the path mirrored left-right at random)."""
    direction, kind = motion_of(label, mirror_free)
    bg = _texture(width, height, rng)
    side = max(6, min(width, height) // 5)
    travel = 0.55 * min(width, height)
    centre = np.array([width / 2, height / 2]) + rng.uniform(-0.08, 0.08, 2) * min(width, height)
    if colour is None:
        colour = _bright_colour(rng)
    flip = np.array([-1.0 if mirror_free and rng.random() < 0.5 else 1.0, 1.0])
    ys, xs = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        cx, cy = centre + travel * flip * _path_offset(direction, kind, i / max(1, num_frames - 1))
        mask = (np.abs(xs - cx) <= side / 2) & (np.abs(ys - cy) <= side / 2)
        frame = bg.copy()
        frame[mask] = colour
        frames[i] = np.clip(frame, 0, 255)
    return frames


def _texture(width: int, height: int, rng: np.random.Generator, low: int = 40, high: int = 200) -> np.ndarray:
    """A static random background (float, H x W x 3): 16-pixel blocks of values in [low, high) plus noise."""
    coarse = rng.integers(low, high, size=(height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
    bg = np.kron(coarse, np.ones((16, 16, 1)))[:height, :width]
    bg += rng.normal(0, 6, size=bg.shape)
    return bg


def _bright_colour(rng: np.random.Generator) -> np.ndarray:
    colour = rng.integers(0, 256, 3)
    colour[rng.integers(3)] = 255   # always bright in one channel, so it stands out
    return colour


# ------------------------------------------------------------------------------------- the order-only task

RED, BLUE = np.array([230, 30, 30]), np.array([30, 60, 230])


def render_order_clip(label: int, num_frames: int, width: int, height: int, rng: np.random.Generator
                      ) -> np.ndarray:
    """(T, H, W, 3) uint8 of ORDER_CLASSES[label]: pair label // 2 rendered forwards, and for an odd label
    the same frames reversed. The random draws do not depend on the label's parity, so the same rng
    state gives a pair's two classes the same bag of frames."""
    pair = label // 2
    bg = _texture(width, height, rng, 70, 170)       # lower contrast than the motion task's: objects stand out
    side = max(4, min(width, height) // 5)
    left, right = side, width - 1 - side            # centres stay inside the frame
    t = np.linspace(0.0, 1.0, num_frames)
    ramp = lambda a, b: a + (b - a) * t             # noqa: E731  (position per frame)
    still = lambda v: np.full(num_frames, float(v))  # noqa: E731
    ones = still(1.0)
    if pair == 0:      # pushing left to right at some height
        objects = [(ramp(left, right), still(height / 2 + rng.uniform(-0.2, 0.2) * height), _bright_colour(rng), ones)]
    elif pair == 1:    # moving down at some x
        objects = [(still(width / 2 + rng.uniform(-0.2, 0.2) * width), ramp(side, height - 1 - side),
                    _bright_colour(rng), ones)]
    elif pair == 2:    # appearing somewhere: fading in
        objects = [(still(rng.uniform(left, right)), still(rng.uniform(side, height - 1 - side)),
                    _bright_colour(rng), t)]
    else:              # two objects crossing, one in each half: red/blue (what) or top/bottom (where)
        top, bottom = height * 0.28 + rng.uniform(-2, 2), height * 0.72 + rng.uniform(-2, 2)
        if pair == 3:
            red_on_top = rng.random() < 0.5
            rows, colours = (top, bottom) if red_on_top else (bottom, top), (RED, BLUE)
        else:
            colour = _bright_colour(rng)
            rows, colours = (top, bottom), (colour, colour)
        objects = [(ramp(left, right), still(rows[0]), colours[0], ones),
                   (ramp(right, left), still(rows[1]), colours[1], ones)]
    ys, xs = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        frame = bg.copy()
        for cx, cy, colour, alpha in objects:
            mask = (np.abs(xs - cx[i]) <= side / 2) & (np.abs(ys - cy[i]) <= side / 2)
            frame[mask] = alpha[i] * np.asarray(colour, np.float32) + (1 - alpha[i]) * frame[mask]
        frames[i] = np.clip(frame, 0, 255)
    return frames[::-1].copy() if label % 2 else frames


def _render(spec: SynthSpec, label: int, rng: np.random.Generator) -> np.ndarray:
    """The clip of ``label`` under ``spec.task``."""
    render = render_order_clip if spec.task == "order" else render_clip
    return render(label, spec.num_frames, spec.width, spec.height, rng)


def _class_names(spec: SynthSpec, motion_name: Callable[[int], str]) -> list[str]:
    return list(ORDER_CLASSES[:spec.classes]) if spec.task == "order" else [motion_name(c) for c in range(spec.classes)]


def write_video(path: Path, frames: np.ndarray, fps: float, codec: str, keyframe_interval: int = 48) -> None:
    """Frames -> a video file as a camera or the owners' export would have written it."""
    settings = EncodeSettings(codec=codec, short_side=0, keyframe_interval=keyframe_interval)
    enc = ClipEncoder(settings, rate_fraction(fps), frames.shape[2], frames.shape[1])
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
    """(label, j, rng) for every clip, in a fixed order, each with its own random stream; in the order
    task a pair's two classes share clip j's stream (so clip j of one is clip j of the other reversed)."""
    for label in range(spec.classes):
        for j in range(spec.clips_per_class):
            # a 4-word key in the order task: streams apart from the motion task's
            key = [spec.seed, label // 2, j, 1] if spec.task == "order" else [spec.seed, label, j]
            yield label, j, np.random.default_rng(key)


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
    names = _class_names(spec, lambda c: f"Moving something {class_phrase(c)}")
    _write_json_crlf(out / "labels" / "something-something-v2-labels.json",
                     {name: str(i) for i, name in enumerate(names)})
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for label, j, rng in _clips(spec):
        vid = str(1000 + label * spec.clips_per_class + j)
        write_video(out / "20bn-something-something-v2" / f"{vid}.webm", _render(spec, label, rng), 12, "vp9",
                    keyframe_interval=1 if spec.task == "order" else 48)
        thing = ("box", "cup", "pen", "book")[j % 4]
        template = names[label].replace("something", "[something]", 1)
        entry = {"id": vid, "label": names[label].replace("something", thing, 1).lower(),
                 "template": template, "placeholders": [thing]}
        split = split_of(j)
        splits[split].append(entry if split != "test" else {"id": vid})
    for split, fname in (("train", "train"), ("val", "validation"), ("test", "test")):
        _write_json_crlf(out / "labels" / f"something-something-v2-{fname}.json", splits[split])


def synth_sthv1(out: Path, spec: SynthSpec) -> None:
    """`20bn-something-something-v1/<id>/00001.jpg` + `something-something-v1-*.csv` (`id;label`).
    Class names hold a comma (as real ones do) and are listed out of alphabetical order, so the two
    class-id conventions differ."""
    names = _class_names(spec, lambda c: f"Pushing something {class_phrase(c)}, without lifting it")
    (out / "something-something-v1-labels.csv").write_text("".join(n + "\n" for n in names))
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for label, j, rng in _clips(spec):
        vid = str(1000 + label * spec.clips_per_class + j)
        write_frames(out / "20bn-something-something-v1" / vid, _render(spec, label, rng), "{:05d}.jpg")
        split = split_of(j)
        lines[split].append(vid if split == "test" else f"{vid};{names[label]}")
    for split, fname in (("train", "train"), ("val", "validation"), ("test", "test")):
        (out / f"something-something-v1-{fname}.csv").write_text("\n".join(lines[split]) + "\n")


EGO_SUBJECT = {"train": 3, "val": 1, "test": 2}   # one subject of each of the owners' splits
EGO_GAP = 6                                       # idle frames before each gesture


def synth_egogesture(out: Path, spec: SynthSpec) -> None:
    """`images_320-240/SubjectNN/Scene1/Color/rgbG/000001.jpg` + `labels-final-revised1/subjectNN/
    Scene1/GroupG.csv` (`label,start,end`, 1-based labels and frames), 4 gestures per group, with the
    published quirks: the test subject's files are lower-case `groupG.csv`, no file ends with a newline,
    and `.DS_Store` strays lie about. (The blank ` ,,` row is left out: it is rejected, and a tiny set
    would then exceed the default --max-reject-frac.)"""
    by_subject: dict[int, list[tuple[int, np.ndarray]]] = {}
    for label, j, rng in _clips(spec):
        clip = _render(spec, label, rng)
        by_subject.setdefault(EGO_SUBJECT[split_of(j)], []).append((label, clip))
    for subject, clips in sorted(by_subject.items()):
        for g in range(0, len(clips), 4):
            group = g // 4 + 1
            frames, rows = [], []
            for label, clip in clips[g:g + 4]:
                frames.extend([np.full_like(clip[0], 128)] * EGO_GAP)
                rows.append(f"{label + 1},{len(frames) + 1},{len(frames) + len(clip)}")
                frames.extend(clip)
            scene = out / "images_320-240" / f"Subject{subject:02d}" / "Scene1"
            write_frames(scene / "Color" / f"rgb{group}", np.stack(frames), "{:06d}.jpg")
            label_dir = out / "labels-final-revised1" / f"subject{subject:02d}" / "Scene1"
            label_dir.mkdir(parents=True, exist_ok=True)
            stem = "group" if subject == EGO_SUBJECT["test"] else "Group"
            (label_dir / f"{stem}{group}.csv").write_text("\n".join(rows))
        (out / "labels-final-revised1" / f"subject{subject:02d}" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")


# EPIC: the videos each split's clips are strung along, (participant, video id); PXX_1YY runs at 50 fps.
EPIC100_VIDEOS = {"train": [("P01", "P01_01"), ("P01", "P01_101")], "val": [("P02", "P02_01")],
                  "test": [("P03", "P03_101")]}
EPIC55_VIDEOS = {"train": [("P01", "P01_01"), ("P01", "P01_02")], "val": [("P02", "P02_03")],
                 "test": [("P01", "P01_11")]}
EPIC_GAP = 10
NOUNS = (("cup", (230, 40, 40)), ("plate", (40, 90, 230)))   # the noun is the object's colour


def _timestamp(seconds: float, decimals: int) -> str:
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{seconds - whole + whole % 60:0{3 + decimals}.{decimals}f}"


def _epic_timestamp(frame: int, fps: float) -> str:
    """The first `HH:MM:SS.ff` from which the owners' rule, max(1, floor(t * fps)), gives `frame`."""
    centis = max(0, math.floor(frame / fps * 100) - 2)
    while frame_of(parse_timestamp(_timestamp(centis / 100, 2), Path("synth"), 0, "t"), fps) < frame:
        centis += 1
    return _timestamp(centis / 100, 2)


@dataclass
class _Segment:
    participant: str
    video: str
    fps: float
    label: int
    noun: int
    start_frame: int
    stop_frame: int
    start_ts: str
    stop_ts: str


def _epic_videos(out: Path, spec: SynthSpec, videos: dict, video_path: Callable[[str, str, str], Path],
                 frames_path: Callable[[str, str, str], Path] | None) -> dict[str, list[_Segment]]:
    """Write the long videos (H.264 MP4, as the head-mounted cameras record) and return the segments."""
    per_video: dict[tuple[str, str, str], list[tuple[int, int, np.ndarray]]] = {}
    for label, j, rng in _clips(spec):
        split = split_of(j)
        participant, video = videos[split][(label + j) % len(videos[split])]
        noun = (label + j // 2) % len(NOUNS)
        clip = render_clip(label, spec.num_frames, spec.width, spec.height, rng, colour=NOUNS[noun][1],
                           mirror_free=True)
        per_video.setdefault((split, participant, video), []).append((label, noun, clip))
    segments: dict[str, list[_Segment]] = {"train": [], "val": [], "test": []}
    for (split, participant, video), clips in sorted(per_video.items()):
        fps = nominal_fps(video)
        frames = []
        for label, noun, clip in clips:
            frames.extend([np.full_like(clip[0], 128)] * EPIC_GAP)
            first, last = len(frames) + 1, len(frames) + len(clip)
            start_ts, stop_ts = _epic_timestamp(first, fps), _epic_timestamp(last, fps)
            start = frame_of(parse_timestamp(start_ts, Path(video), 0, "start"), fps)
            stop = frame_of(parse_timestamp(stop_ts, Path(video), 0, "stop"), fps)
            segments[split].append(_Segment(participant, video, fps, label, noun, start, stop, start_ts, stop_ts))
            frames.extend(clip)
        frames.extend([np.full_like(frames[0], 128)] * EPIC_GAP)
        write_video(video_path(split, participant, video), np.stack(frames), fps, "h264", keyframe_interval=60)
        if frames_path is not None:
            write_frames(frames_path(split, participant, video), np.stack(frames), "frame_{:010d}.jpg")
    return segments


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _verb(label: int) -> str:
    return "move-" + class_phrase(label, mirror_free=True).replace(" ", "-")


def synth_epic100(out: Path, spec: SynthSpec, rgb_frames: bool = False) -> None:
    """`PXX/videos/PXX_YY.MP4` (60 fps; `PXX_1YY` 50 fps) + the EPIC_100_*.csv files; with
    `rgb_frames`, also `PXX/rgb_frames/PXX_YY/frame_0000000001.jpg`."""
    segments = _epic_videos(out, spec, EPIC100_VIDEOS, lambda s, p, v: out / p / "videos" / f"{v}.MP4",
                            (lambda s, p, v: out / p / "rgb_frames" / v) if rgb_frames else None)
    _write_csv(out / "EPIC_100_verb_classes.csv", ["id", "key", "instances", "category"],
               [[c, _verb(c), str([_verb(c)]), "motion"] for c in range(spec.classes)])
    _write_csv(out / "EPIC_100_noun_classes.csv", ["id", "key", "instances", "category"],
               [[i, n, str([n]), "crockery"] for i, (n, _) in enumerate(NOUNS)])
    columns = ["narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
               "stop_timestamp", "start_frame", "stop_frame"]
    labels = ["narration", "verb", "verb_class", "noun", "noun_class", "all_nouns", "all_noun_classes"]
    for split, name in (("train", "EPIC_100_train.csv"), ("val", "EPIC_100_validation.csv"),
                        ("test", "EPIC_100_test_timestamps.csv")):
        rows, counters = [], {}
        for seg in segments[split]:
            n = counters[seg.video] = counters.get(seg.video, -1) + 1
            narration_ts = "" if n == 1 else _timestamp(seg.start_frame / seg.fps + 0.0005, 3)  # one left empty
            row = [f"{seg.video}_{n}", seg.participant, seg.video, narration_ts, seg.start_ts, seg.stop_ts,
                   seg.start_frame, seg.stop_frame]
            noun = NOUNS[seg.noun][0]
            if split != "test":
                row += [f"{_verb(seg.label)} {noun}", _verb(seg.label), seg.label, noun, seg.noun,
                        str([noun]), str([seg.noun])]
            rows.append(row)
        _write_csv(out / name, columns + (labels if split != "test" else []), rows)
    _write_video_info(out / "EPIC_100_video_info.csv", ["video_id", "duration", "fps", "resolution"], segments,
                      spec, lambda v, d, f, r: [v, d, f, r])


def _write_video_info(path: Path, header: list[str], segments: dict, spec: SynthSpec, order) -> None:
    last = {}
    for segs in segments.values():
        for seg in segs:
            last[seg.video] = (max(last.get(seg.video, (0, 0))[0], seg.stop_frame + EPIC_GAP), seg.fps)
    _write_csv(path, header, [order(v, f"{n / fps:.6f}", fps, f"{spec.width}x{spec.height}")
                              for v, (n, fps) in sorted(last.items())])


def synth_epic55(out: Path, spec: SynthSpec, rgb_frames: bool = False) -> None:
    """`videos/<train|test>/PXX/PXX_YY.MP4` + the EPIC_*.csv files of EPIC-55; it has no validation
    split, so clips that other datasets put in val go to `EPIC_test_s2_timestamps.csv` (unseen
    kitchens) and test clips to s1. With `rgb_frames`, also `frames_rgb_flow/rgb/<split>/PXX/PXX_YY/`."""
    folder = {"train": "train", "val": "test", "test": "test"}
    segments = _epic_videos(
        out, spec, EPIC55_VIDEOS, lambda s, p, v: out / "videos" / folder[s] / p / f"{v}.MP4",
        (lambda s, p, v: out / "frames_rgb_flow" / "rgb" / folder[s] / p / v) if rgb_frames else None)
    _write_csv(out / "EPIC_verb_classes.csv", ["verb_id", "class_key", "verbs"],
               [[c, _verb(c), str([_verb(c)])] for c in range(spec.classes)])
    _write_csv(out / "EPIC_noun_classes.csv", ["noun_id", "class_key", "nouns"],
               [[i, n, str([n])] for i, (n, _) in enumerate(NOUNS)])
    uid = 0
    span = ["start_timestamp", "stop_timestamp", "start_frame", "stop_frame"]
    for split, name in (("train", "EPIC_train_action_labels.csv"), ("test", "EPIC_test_s1_timestamps.csv"),
                        ("val", "EPIC_test_s2_timestamps.csv")):
        rows = []
        for seg in segments[split]:
            noun = NOUNS[seg.noun][0]
            times = [seg.start_ts, seg.stop_ts, seg.start_frame, seg.stop_frame]
            if split == "train":
                rows.append([uid, seg.participant, seg.video, f"{_verb(seg.label)} {noun}", *times,
                             _verb(seg.label), seg.label, noun, seg.noun, str([noun]), str([seg.noun])])
            else:
                rows.append([uid, seg.participant, seg.video, *times])
            uid += 1
        header = (["uid", "participant_id", "video_id", "narration", *span, "verb", "verb_class", "noun",
                   "noun_class", "all_nouns", "all_noun_classes"] if split == "train"
                  else ["uid", "participant_id", "video_id", *span])
        _write_csv(out / name, header, rows)
    _write_video_info(out / "EPIC_video_info.csv", ["video", "resolution", "duration", "fps"], segments, spec,
                      lambda v, d, f, r: [v, r, d, f])


WRITERS: dict[str, Callable[..., None]] = {"sthv1": synth_sthv1, "sthv2": synth_sthv2,
                                           "egogesture": synth_egogesture, "epic55": synth_epic55,
                                           "epic100": synth_epic100}


def synthesize(dataset: str, out_dir: Path | str, classes: int = 4, clips_per_class: int = 4, seed: int = 0,
               num_frames: int = 48, width: int = 160, height: int = 128, rgb_frames: bool = False,
               task: str = "motion") -> Path:
    """Write the raw dataset `dataset` into `out_dir` (created) and return it. `rgb_frames` (EPIC only)
    also writes the per-frame JPEG folders the owners publish beside the videos; `task`: see the module
    docstring."""
    name = canonical_name(dataset)
    if name not in WRITERS:
        raise ConfigError(f"--dataset {dataset!r}: synth knows {', '.join(WRITERS)}")
    if task not in TASKS:
        raise ConfigError(f"--task {task!r}: one of {', '.join(TASKS)}")
    if task == "order" and name != "sthv2":
        raise ConfigError(f"--task order writes the sthv2 layout only (all-intra VP9 videos, so that a pair's "
                          f"decoded frames are the same), not {name}")
    most = {"order": len(ORDER_CLASSES)}.get(task, MAX_MIRROR_FREE_CLASSES if name.startswith("epic") else MAX_CLASSES)
    if not 1 <= classes <= most:
        raise ConfigError(f"--classes must be within 1..{most} for {name}, got {classes}")
    if clips_per_class < 1 or num_frames < 2 or width < 16 or height < 16:
        raise ConfigError("--clips-per-class >= 1, --num-frames >= 2 and a size of at least 16x16 are needed")
    if rgb_frames and not name.startswith("epic"):
        raise ConfigError(f"--rgb-frames applies to EPIC only; {name} is published as frames or videos already")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = SynthSpec(classes, clips_per_class, seed, num_frames, width, height, task)
    if name.startswith("epic"):
        WRITERS[name](out, spec, rgb_frames=rgb_frames)
    else:
        WRITERS[name](out, spec)
    return out


def synthesize_and_shard(dataset: str, work: Path | str, *, codec: str = "vp9", short_side: int = 0,
                         splits: str | None = None, shard_size: int = 500, workers: int = 1, classes: int = 4,
                         clips_per_class: int = 4, seed: int = 0, num_frames: int = 48, width: int = 160,
                         height: int = 128, task: str = "motion") -> Path:
    """A synthetic raw set written by :func:`synthesize` into ``<work>/raw-<dataset>``, sharded by the real
    shard tool into ``<work>/shards-<codec>/<dataset>`` (returned; what a loader or ``data.shards/
    data.dataset`` points at); a task other than motion adds ``-<task>`` to both folder names. Both are
    reused when a previous call made them: tests, benchmarks and demos share this one path from nothing
    to shards."""
    from pipeline.shard import main as shard_main      # the shard tool imports more than synth needs

    name = canonical_name(dataset)
    work = Path(work)
    suffix = "" if task == "motion" else f"-{task}"
    shards = work / f"shards-{codec}{suffix}" / name
    if (shards / "manifest.json").is_file():
        return shards
    raw = work / f"raw-{name}{suffix}"
    if not raw.is_dir():
        synthesize(name, raw, classes, clips_per_class, seed, num_frames, width, height, task=task)
    argv = ["--dataset", name, "--root", str(raw), "--out", str(shards.parent), "--codec", codec,
            "--short-side", str(short_side), "--shard-size", str(shard_size), "--workers", str(workers),
            "--no-progress"] + (["--splits", splits] if splits else [])
    status = shard_main(argv)
    if status != cli.EXIT_OK:
        raise DataError(f"pipeline/shard.py {' '.join(argv)} ended with status {status} (see above)")
    return shards


@cli.tool("pipeline/synth.py")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pipeline/synth.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=NAMES)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--classes", type=int, default=4,
                   help=f"1..{MAX_CLASSES}, EPIC 1..{MAX_MIRROR_FREE_CLASSES} (default 4)")
    p.add_argument("--clips-per-class", type=int, default=4, help="default 4: 2 train, 1 val, 1 test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-frames", type=int, default=48)
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--rgb-frames", action="store_true", help="EPIC: also write the rgb_frames JPEG folders")
    p.add_argument("--task", choices=TASKS, default="motion",
                   help=f"motion (default) or order: pairs of classes that differ only in frame order "
                        f"(1..{len(ORDER_CLASSES)} classes; sthv2 only)")
    args = p.parse_args(argv)
    out = synthesize(args.dataset, args.out, args.classes, args.clips_per_class, args.seed,
                     args.num_frames, args.width, args.height, args.rgb_frames, args.task)
    print(f"wrote {args.dataset} ({args.classes} classes x {args.clips_per_class} clips) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
