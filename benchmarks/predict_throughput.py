"""Videos/s of train/predict.py on 2-second 256p clips: decode, sample, crop, score, average the views.

    python benchmarks/predict_throughput.py --work /tmp/predict-bench                  # CPU, TSM-R50+W3, 8x224
    python benchmarks/predict_throughput.py --work /tmp/pb --device cuda --videos 256 --batch-size 16

The clips are synthetic (pipeline/synth.py's moving shapes), 456x256 at 25 fps, 50 frames, written once as
webm/VP9 (decoded by DALI, on the CPU too) and as mp4/H.264 (PyAV on the CPU; NVDEC on a GPU). The model
is randomly initialised (its speed does not depend on its weights) and goes through the same export files
as a trained one. Per codec and protocol: videos/s end to end (`train.predict.predict`, after one warm-up
batch) and of the decoding alone (the same FileLoader without the model).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from pipeline import cli

import numpy as np
import torch

from pipeline.errors import ConfigError, DataError
from pipeline.file_loader import FileLoader
from pipeline.loader import resolve_device
from pipeline.loader_settings import LoaderSettings
from pipeline.synth import render_clip, write_video
from train.exported_model import load_exported, write_exported
from train.predict import predict
from w3model import build_model

WIDTH, HEIGHT, FPS, SECONDS = 456, 256, 25, 2
EXT = {"vp9": "webm", "h264": "mp4"}


def make_videos(folder: Path, codec: str, count: int) -> list[Path]:
    """`count` 2-second 256p clips in `codec`, reused when already written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"clip{i:04d}.{EXT[codec]}"
        if not path.is_file():
            frames = render_clip(i % 8, FPS * SECONDS, WIDTH, HEIGHT, np.random.default_rng(i))
            write_video(path, frames, FPS, codec, keyframe_interval=FPS)
        paths.append(path)
    return paths


def make_model(path: Path, args: argparse.Namespace) -> Path:
    kwargs = dict(arch=args.arch, depth=args.depth, num_segments=args.frames, heads={"label": 174})
    view = {"crop_size": args.crop, "scale_size": args.scale}
    return write_exported(path, build_model(**kwargs), kwargs, {"dataset": "sthv2", "view": view, "classes": None})


def timed(run) -> tuple[float, object]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def decode_only(videos: list[Path], settings: LoaderSettings, device: torch.device) -> set[str]:
    """Every batch of the inputs without the model; the decoders that made them."""
    loader = FileLoader(videos, settings, device)
    decoders = {batch["decoder"] for batch in loader}
    if loader.failed:
        raise DataError(f"benchmark inputs failed: {loader.failed[:3]}")
    return decoders


def measure(videos: list[Path], exported, settings: LoaderSettings, device: torch.device) -> dict:
    predict(exported, videos[:settings.batch_size], settings, device)          # warm-up
    seconds, _ = timed(lambda: predict(exported, videos, settings, device))
    decode_seconds, decoders = timed(lambda: decode_only(videos, settings, device))
    return {"videos": len(videos), "videos_per_s": round(len(videos) / seconds, 2),
            "decode_videos_per_s": round(len(videos) / decode_seconds, 2), "decoder": ",".join(sorted(decoders))}


@cli.tool("benchmarks/predict_throughput.py")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/predict_throughput.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="clips and model are written here (reused)")
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--codecs", default="vp9,h264")
    p.add_argument("--protocols", default="val", help="val and/or test (6 views per video)")
    p.add_argument("--arch", default="tsm_w3")
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--scale", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4, help="videos per batch")
    p.add_argument("--threads", type=int, default=2, help="decoding threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)
    if args.videos < 1:
        raise ConfigError(f"--videos: must be >= 1, got {args.videos}")
    unknown = set(args.codecs.split(",")) - set(EXT)
    if unknown:
        raise ConfigError(f"--codecs: {', '.join(sorted(unknown))} not among {', '.join(EXT)}")
    device = resolve_device(args.device)
    exported = load_exported(make_model(args.work / "model.pt", args), device)
    rows = []
    for codec in args.codecs.split(","):
        videos = make_videos(args.work / codec, codec, args.videos)
        for protocol in args.protocols.split(","):
            settings = LoaderSettings(split="files", mode=protocol, batch_size=args.batch_size,
                                      num_segments=args.frames, crop_size=args.crop, scale_size=args.scale,
                                      num_threads=args.threads, labels={"mode": "--protocols"})
            row = {"codec": codec, "protocol": protocol, **measure(videos, exported, settings, device)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_avg": os.getloadavg(),
            "model": f"{args.arch}-R{args.depth}",
            "input": f"{args.frames}x{args.crop}", "clips": f"{WIDTH}x{HEIGHT}, {FPS} fps, {SECONDS} s"}
    print(json.dumps(meta))
    if args.out is not None:
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
