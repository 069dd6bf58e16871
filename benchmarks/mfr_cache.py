"""Stage 2's teacher cache, side by side in one run: bytes per view, build views/s and MB/s, read views/s and
MB/s (cold and warm page cache; the default records and FFCV), the quantisation error and what it does to
L_fm, and stage-2 optimiser-step throughput with `mfr.source: cache` vs `online`.

    python benchmarks/mfr_cache.py --work /tmp/mfr-bench                       # 2-core CPU: small clips
    python benchmarks/mfr_cache.py --work /tmp/mfr-bench --preset h100         # one GPU: R50 8x224 bf16

Everything is made here: a synthetic sthv2 set (pipeline/synth.py + pipeline/shard.py), a stage-1 teacher
trained for a few steps (its quality does not change any figure but the quantisation error, which is
measured on its features), the cache (`train/teacher_cache.py build`) and its FFCV copy (`export`), and the
two stage-2 runs (`train/run.py`, metrics.csv's windows after the first). Results: `<work>/mfr_cache.json`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from pipeline import cli

import torch

from pipeline.errors import DataError
from pipeline.synth import synthesize_and_shard
from train.feature_store import RecordLayout, dequantize, quantize
from train.objectives import feature_mimicking_loss
from train.run_log import read_csv

REPO = Path(__file__).resolve().parents[1]
PRESETS = {
    "cpu": dict(depth=18, segments=4, crop=112, scale=128, batch=4, precision="fp32", views=2, steps=32, window=4,
                clips_per_class=96, teacher_steps=12),
    "h100": dict(depth=50, segments=8, crop=224, scale=256, batch=32, precision="bf16", views=2, steps=60,
                 window=10, clips_per_class=512, teacher_steps=20),
}


def settings(p: dict, shards: Path, teacher: Path, cache: Path, threads: int) -> list[str]:
    sets = {"data.shards": shards, "data.dataset": "sthv2", "model.arch": "tsm_w3", "model.depth": p["depth"],
            "model.pretrained": "null", "data.num_segments": p["segments"], "data.crop_size": p["crop"],
            "data.scale_size": p["scale"], "data.num_threads": threads, "train.batch_size": p["batch"],
            "eval.batch_size": p["batch"], "train.precision": p["precision"], "data.train_views": p["views"],
            "mfr.teacher": teacher, "mfr.cache": cache, "train.progress": "false", "eval.every_epochs": 0,
            "eval.final": "false", "train.ckpt_every": 0, "train.epochs": 1000}
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


def run(cmd: list[str]) -> tuple[float, str]:
    """(seconds, stdout) of a tool; a DataError when it failed."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *cmd], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(done.stdout)
    if done.returncode != 0:
        raise DataError(f"failed: {' '.join(map(str, cmd))}")
    return time.perf_counter() - start, done.stdout


def drop_page_cache(folder: Path) -> None:
    """Cold reads: ask the kernel to forget the cache's pages (posix_fadvise DONTNEED, no root needed)."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def read_rate(root: Path, batch: int, cold: bool) -> dict:
    """Every record once, in batches, in a shuffled order (as a student's plan reads them)."""
    from train.teacher_cache import open_cache

    cache = open_cache(root)
    pairs = [(k, v) for k in cache._where for v in range(cache.views)]
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0)).tolist()
    for part in range(len(cache.parts)):          # files opened (and FFCV imported) before the clock starts
        cache._ffcv_part(part) if cache.storage == "ffcv" else cache._fd(part)
    if cold:
        drop_page_cache(root / "parts")
    start = time.perf_counter()
    for i in range(0, len(order), batch):
        chunk = [pairs[j] for j in order[i:i + batch]]
        cache.read_raw([k for k, _ in chunk], [v for _, v in chunk])
    seconds = time.perf_counter() - start
    payload = len(pairs) * cache.layout.record_bytes
    return {"views_per_s": round(len(pairs) / seconds, 1), "mb_per_s": round(payload / seconds / 2**20, 1)}


def ffcv_loader_rate(root: Path, batch: int) -> dict | None:
    """FFCV's own Loader over the parts (its fast path), warm page cache, in file order; its compilation
    (the first pass) is left out."""
    try:
        import numpy as np
        from ffcv.fields.decoders import NDArrayDecoder
        from ffcv.loader import Loader, OrderOption
    except ImportError:
        return None
    def epoch() -> int:
        count = 0
        for beton in sorted((root / "parts").glob("*.beton")):
            loader = Loader(str(beton), batch_size=batch, num_workers=1, order=OrderOption.SEQUENTIAL,
                            pipelines={"values": [NDArrayDecoder()], "meta": [NDArrayDecoder()],
                                       "scales": [NDArrayDecoder()]})
            count += sum(len(np.asarray(out[0])) for out in loader)
        return count

    epoch()                                       # the first pass compiles FFCV's pipelines (numba)
    start = time.perf_counter()
    records = epoch()
    seconds = time.perf_counter() - start
    return {"views_per_s": round(records / seconds, 1)}


def quantisation(cfg_args: list[str], root: Path, batches: int = 4) -> dict:
    """Relative RMS error of the stored features against the teacher's own, and of L_fm against a
    student (a second, untrained model) computed with the exact and with the stored features."""
    from pipeline.loader import build_loader
    from pipeline.plan import PlanItem
    from train.cache_build import Teacher
    from train.config import load_config, shards_dir
    from train.teacher_cache import open_cache
    from w3model import VideoNet

    cfg = load_config(REPO / "launch" / "smoke.yaml", [a for a in cfg_args if a != "--set"])
    cache = open_cache(root)
    teacher = Teacher(cfg["mfr"]["teacher"], torch.device("cpu"))
    student = VideoNet(teacher.config).eval()
    loader = build_loader(shards_dir(cfg), cfg.loaders["cache"])
    items = [PlanItem(s, i, v, True) for s, f in enumerate(loader.shards.files) for i in range(f.samples)
             for v in range(cache.views)][:batches * cfg.loaders["cache"].batch_size]
    err, norm, losses = 0.0, 0.0, []
    with torch.no_grad():
        for batch in loader.replay(items):
            exact = teacher.model(batch["frames"])["features"]
            stored = cache.read(batch["keys"], batch["view_ids"].tolist())
            err += float((stored - exact).pow(2).sum())
            norm += float(exact.pow(2).sum())
            mine = student(batch["frames"])["features"]
            weight = torch.ones(len(exact))
            losses.append((float(feature_mimicking_loss(mine, exact, weight)),
                           float(feature_mimicking_loss(mine, stored, weight))))
    exact_l, stored_l = map(sum, zip(*losses))
    half = RecordLayout(cache.layout.shape, "float16")
    y = exact.float()
    fp16 = dequantize(torch.from_numpy(quantize(y, "float16")[0]), None)
    return {"relative_rms_error_uint8": (err / norm) ** 0.5, "relative_rms_error_float16":
            float((fp16 - y).norm() / y.norm()), "l_fm_relative_change": abs(stored_l - exact_l) / exact_l,
            "bytes_per_view_uint8": cache.layout.record_bytes, "bytes_per_view_float16": half.record_bytes}


def stage2_rate(p: dict, args_base: list[str], out: Path, source: str) -> dict:
    run(["train/run.py", "--cfg", "launch/smoke.yaml", *args_base, "--set", "train.objective=mfr", "--set",
         f"mfr.source={source}", "--set", f"out_dir={out}", "--set", f"train.max_steps={p['steps']}", "--set",
         f"train.log_every={p['window']}"])
    rows = read_csv(out / "metrics.csv")[1:]                # the first window holds the start-up
    return {"clips_per_s": round(sum(float(r["clips_per_s"]) for r in rows) / len(rows), 2),
            "data_wait_frac": round(sum(float(r["data_wait_frac"]) for r in rows) / len(rows), 4)}


@cli.tool("benchmarks/mfr_cache.py")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/mfr_cache.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (reused: data, teacher)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="loader threads")
    parser.add_argument("--shards", type=Path, help="a shard root holding sthv2/ with a train split (default: "
                                                    "synthesised here)")
    args = parser.parse_args(argv)
    p = PRESETS[args.preset]
    work = args.work
    shards = args.shards or synthesize_and_shard(
        "sthv2", work, codec="vp9", short_side=p["scale"], splits="train", shard_size=64, workers=os.cpu_count() or 1,
        classes=4, clips_per_class=p["clips_per_class"], num_frames=32, width=p["scale"] * 5 // 4,
        height=p["scale"]).parent
    teacher, cache, ffcv = work / "teacher", work / "cache", work / "cache-ffcv"
    base = settings(p, shards, teacher, cache, args.threads)
    if not (teacher / "checkpoints").is_dir():
        run(["train/run.py", "--cfg", "launch/smoke.yaml", *base, "--set", f"out_dir={teacher}", "--set",
             f"train.max_steps={p['teacher_steps']}", "--set", "data.train_views=0"])
    for folder in (cache, ffcv):
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    build_s, build_out = run(["train/teacher_cache.py", "build", "--cfg", "launch/smoke.yaml", *base])
    wrote = re.search(r"rank 0: wrote (\d+) views in ([\d.]+) s", build_out)
    from train.teacher_cache import info
    summary = info(cache)
    export_s, _ = run(["train/teacher_cache.py", "export", str(cache), str(ffcv)])
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available()
                    else None, "load_average": os.getloadavg()},
        "preset": args.preset, "setting": p, "command": " ".join(sys.argv),
        "cache": {"records": summary["records"], "bytes": summary["bytes"], "record_bytes": summary["record_bytes"],
                  "shape": summary["shape"]},
        "build": {"seconds_with_startup": round(build_s, 2), "seconds": float(wrote.group(2)),
                  "views_per_s": round(int(wrote.group(1)) / float(wrote.group(2)), 1),
                  "mb_per_s": round(summary["bytes"] / float(wrote.group(2)) / 2**20, 2)},
        "ffcv_export_s": round(export_s, 2),
        "read": {f"{storage}_{state}": read_rate(root, p["batch"], state == "cold")
                 for storage, root in (("records", cache), ("ffcv", ffcv)) for state in ("cold", "warm")},
        "ffcv_loader_warm": ffcv_loader_rate(ffcv, p["batch"]),
        "quantisation": quantisation(base, cache),
        "stage2": {source: stage2_rate(p, base, work / f"student-{source}", source) for source in ("cache", "online")},
    }
    s2 = result["stage2"]
    result["stage2"]["cache_over_online"] = round(s2["cache"]["clips_per_s"] / s2["online"]["clips_per_s"], 2)
    (work / "mfr_cache.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
