"""shard.py throughput (clips/s) against the plain `ffmpeg` command line doing the same transcodes.

    python benchmarks/shard_throughput.py [--codec vp9] [--classes 8] [--clips-per-class 8]
                                          [--width 640 --height 360] [--workers 1,2] [--work DIR]

Both sides start from the same synthetic EPIC-100 set (long H.264 MP4s per participant + CSVs) and
write the same clips: every action segment cut at its published frames, short side 256, the same
encoder settings (pipeline/transcode.py EncodeSettings, one encoder thread per process). ffmpeg runs
the usual way, one `ffmpeg -ss START -i VIDEO -frames:v N ...` per clip, N processes at a time for N
workers; shard.py runs its whole command (parse, decode each video once, encode, write tars, index,
manifest). Wall-clock time, best of --repeat runs, the CPU seconds the run's processes used (user +
system, from getrusage of the children: on a machine shared with other jobs the wall clock depends on
them, the CPU time much less), and the MB each tool wrote (ffmpeg: the clips; shard.py: the tars,
which also hold the JSON and tar headers).
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline import cli

import av

from pipeline.datasets import parse_dataset
from pipeline.errors import DataError
from pipeline.synth import synthesize
from pipeline.transcode import VIDEO_EXT, EncodeSettings, output_size

REPO = Path(__file__).resolve().parents[1]

FFMPEG_CODEC = {"h264": "libx264", "vp9": "libvpx-vp9", "mjpeg": "mjpeg"}


def ffmpeg_command(video: Path, start_frame: int, frames: int, fps: float, out: Path,
                   settings: EncodeSettings, size: tuple[int, int]) -> list[str]:
    """The same cut and encode as shard.py, as one ffmpeg command line."""
    opts = settings.encoder_options()
    codec_args: list[str] = []
    for key, value in opts.items():
        codec_args += [f"-{key}", value]
    pix = "yuvj420p" if settings.codec == "mjpeg" else "yuv420p"
    return ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-threads", "1",
            "-ss", f"{(start_frame - 1) / fps:.6f}", "-i", str(video), "-frames:v", str(frames),
            "-vf", f"scale={size[0]}:{size[1]}:flags=area", "-an", "-c:v", FFMPEG_CODEC[settings.codec],
            "-threads", "1", "-pix_fmt", pix, *codec_args, "-fflags", "+bitexact", str(out)]


def run_ffmpeg(raw: Path, out: Path, settings: EncodeSettings, workers: int) -> tuple[float, int]:
    index = parse_dataset("epic100", raw)
    jobs, sizes = [], {}
    for records in index.records.values():
        for rec in records:
            if rec.video not in sizes:
                with av.open(str(rec.video)) as c:
                    ctx = c.streams.video[0].codec_context
                    sizes[rec.video] = output_size(ctx.width, ctx.height, settings.short_side)
            size = sizes[rec.video]
            jobs.append(ffmpeg_command(rec.video, rec.start_frame, rec.end_frame - rec.start_frame + 1,
                                       rec.source_fps, out / f"{rec.key}.{VIDEO_EXT[settings.codec]}",
                                       settings, size))
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda cmd: subprocess.run(cmd, capture_output=True), jobs))
    elapsed = time.perf_counter() - start
    failed = [r for r in results if r.returncode != 0]
    if failed:
        raise DataError(f"ffmpeg failed: {failed[0].stderr.decode()[-500:]}")
    return elapsed, len(jobs)


def run_shard(raw: Path, out: Path, codec: str, workers: int) -> tuple[float, int]:
    cmd = [sys.executable, str(REPO / "pipeline" / "shard.py"), "--dataset", "epic100", "--root", str(raw),
           "--out", str(out), "--codec", codec, "--workers", str(workers), "--no-progress"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise DataError(f"shard.py failed: {done.stderr[-800:]}")
    manifest = json.loads((out / "epic100" / "manifest.json").read_text())
    return elapsed, sum(e["num_samples"] for e in manifest["splits"].values())


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@cli.tool("benchmarks/shard_throughput.py")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/shard_throughput.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--codec", default="vp9", choices=tuple(FFMPEG_CODEC))
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--clips-per-class", type=int, default=8)
    p.add_argument("--num-frames", type=int, default=48)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="shard_bench_"))
    raw = work / "raw"
    if not (raw / "EPIC_100_train.csv").is_file():
        synthesize("epic100", raw, classes=args.classes, clips_per_class=args.clips_per_class,
                   num_frames=args.num_frames, width=args.width, height=args.height)
    settings = EncodeSettings(codec=args.codec)
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        best = {}
        for tool, runner in (("ffmpeg", lambda o: run_ffmpeg(raw, o, settings, workers)),
                             ("shard.py", lambda o: run_shard(raw, o, args.codec, workers))):
            times = []
            for _ in range(args.repeat):
                out = work / f"out_{tool}_{workers}"
                shutil.rmtree(out, ignore_errors=True)
                cpu_before = _children_cpu()
                elapsed, clips = runner(out)
                times.append((elapsed, _children_cpu() - cpu_before))
            outputs = (".tar", f".{VIDEO_EXT[settings.codec]}")   # shard.py's tars, ffmpeg's clips
            written = sum(f.stat().st_size for f in out.rglob("*") if f.suffix in outputs)
            best[tool] = (*min(times), clips, written)
        for tool, (elapsed, cpu, clips, written) in best.items():
            rows.append({"tool": tool, "workers": workers, "clips": clips, "seconds": round(elapsed, 2),
                         "cpu_seconds": round(cpu, 2), "clips_per_s": round(clips / elapsed, 2),
                         "mb": round(written / 1e6, 1)})
    by = {(r["tool"], r["workers"]): r["clips_per_s"] for r in rows}
    print(f"codec {args.codec}; source {args.width}x{args.height} H.264, {args.num_frames}-frame segments; "
          f"output short side {settings.short_side}")
    print(f"{'tool':<10}{'workers':>8}{'clips':>7}{'seconds':>9}{'cpu s':>8}{'clips/s':>9}{'MB':>7}")
    for r in rows:
        print(f"{r['tool']:<10}{r['workers']:>8}{r['clips']:>7}{r['seconds']:>9}{r['cpu_seconds']:>8}"
              f"{r['clips_per_s']:>9}{r['mb']:>7}")
    for w in sorted({r["workers"] for r in rows}):
        print(f"workers {w}: shard.py / ffmpeg = {by[('shard.py', w)] / by[('ffmpeg', w)]:.2f}x")
    if ("shard.py", 1) in by and ("shard.py", 2) in by:
        print(f"shard.py 2 workers / 1 worker = {by[('shard.py', 2)] / by[('shard.py', 1)]:.2f}x")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
