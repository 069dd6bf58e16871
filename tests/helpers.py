"""The one shared test utility: tiny real data made by the project's own tools, ways to read shards back,
the trainer's command line, and ways to damage or forge checkpoint files. Fixtures that hand these out live
in conftest.py.

Everything is small on purpose (ResNet-18, 2 segments, 32x32 crops; 16-48 synthetic clips), so a training
step takes a fraction of a second and a whole epoch decodes in well under one.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.shard import main as shard_main
from pipeline.shard_set import ShardSet
from pipeline.synth import synthesize, synthesize_and_shard
from train.run_log import read_csv

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------- the shard tool's tests

TINY = dict(classes=2, clips_per_class=4, num_frames=16, width=64, height=48)


def make_raw(tmp: Path, dataset: str, **kw) -> Path:
    return synthesize(dataset, tmp / "raw", **{**TINY, **kw})


def shard(raw: Path, out: Path, dataset: str, *extra: str) -> int:
    return shard_main(["--dataset", dataset, "--root", str(raw), "--out", str(out), "--workers", "1",
                       "--no-progress", *extra])


def tars(shards_dir: Path, split: str) -> list[str]:
    manifest = json.loads((shards_dir / "manifest.json").read_text())
    return [str(shards_dir / s["file"]) for s in manifest["splits"][split]["shards"]]


def read_webdataset(shards_dir: Path, split: str) -> list[dict]:
    """Every sample of a split as `webdataset` yields it, in shard order."""
    import webdataset as wds

    return list(wds.WebDataset(tars(shards_dir, split), shardshuffle=False, empty_check=False).decode())


def read_dali(shards_dir: Path, split: str, ext: str) -> list[tuple[np.ndarray, dict]]:
    """(decoded frames, JSON) of every sample via DALI's fn.readers.webdataset + fn.decoders.video, CPU."""
    from nvidia.dali import fn, pipeline_def

    paths = tars(shards_dir, split)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        video, meta = fn.readers.webdataset(paths=paths, index_paths=[p[:-4] + ".idx" for p in paths],
                                            ext=[ext, "json"], missing_component_behavior="error",
                                            name="reader")
        return fn.decoders.video(video, device="cpu"), meta

    p = pipe()
    p.build()
    n = p.epoch_size("reader")
    out = []
    for _ in range(n):
        frames, meta = p.run()
        out.append((np.array(frames[0]), json.loads(bytes(np.array(meta[0])).decode())))
    return out


# ----------------------------------------------------------------------------------- the loader's tests

# 8 motion classes (all eight directions, so left/right classes exist for the flip map), 24-frame 96x64
# clips in shards of 3.
LOADER_RAW = dict(classes=8, clips_per_class=4, num_frames=24, width=96, height=64)
SMALL = dict(batch_size=4, num_segments=4, crop_size=48, scale_size=64, num_threads=2)  # loader settings


def loader_shards(tmp: Path, codec: str, splits: str = "train,val,test", dataset: str = "sthv2",
                  raw_size: dict | None = None) -> Path:
    return synthesize_and_shard(dataset, tmp / splits.replace(",", "-"), codec=codec, short_side=64,
                                splits=splits, shard_size=3, **(raw_size or LOADER_RAW))


def copy_shards(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def corrupt_sample(shards_dir: Path, split: str, shard: int, index: int, member: str = "video") -> str:
    """Overwrite the start of one sample's video (its container header) or JSON in place; the tar stays
    intact. Returns the sample's key."""
    shards = ShardSet(shards_dir, split)
    key = shards.key(shard, index)
    offset, _ = shards.members(shard)[index][shards.video_ext if member == "video" else member]
    shards.close()
    with open(shards.files[shard].path, "r+b") as f:
        f.seek(offset)
        f.write(b"\0" * 64 if member == "video" else b"{{{")
    return key


def rewrite_sample(shards_dir: Path, split: str, shard: int, index: int, *, video=None, meta=None) -> str:
    """Rewrite one shard with sample `index` changed and its manifest entry updated, as if the shard tool
    had written it so: the damage is inside the data, not in the bytes around it. `video(bytes) -> bytes`
    and `meta(dict) -> dict | bytes` transform that sample's members. Returns the sample's key."""
    import tarfile
    from dataclasses import asdict

    from pipeline.shard_writer import write_shard

    shards_dir = Path(shards_dir)
    manifest_path = shards_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["splits"][split]["shards"][shard]
    tar_path = shards_dir / entry["file"]
    samples: dict[str, list[tuple[str, bytes]]] = {}
    with tarfile.open(tar_path) as tar:
        for m in tar:
            key, ext = m.name.split(".", 1)
            samples.setdefault(key, []).append((ext, tar.extractfile(m).read()))
    key = list(samples)[index]
    changed = []
    for ext, data in samples[key]:
        if ext == "json" and meta is not None:
            data = meta(json.loads(data))
            data = data if isinstance(data, bytes) else json.dumps(data, sort_keys=True).encode()
        elif ext != "json" and video is not None:
            data = video(data)
        changed.append((ext, data))
    samples[key] = changed
    info = write_shard(tar_path, samples.items(), shards_dir)
    manifest["splits"][split]["shards"][shard] = asdict(info)
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return key


# ----------------------------------------------------------------------------------- the trainer's tests

DATASET = "sthv2"
CLASSES = 4
CLIPS_PER_CLASS = 8          # synth splits them 2:1:1 -> 16 train, 8 val, 8 test clips


def run_env() -> dict[str, str]:
    # scripts run by path get their own folder first on sys.path; the repo root makes the packages importable
    # however the project was installed. One thread per process keeps runs reproducible and the cores shared.
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def run_tool(cmd: list[str], timeout: int = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=run_env(), capture_output=True, text=True, timeout=timeout)


def train_data(root: Path, dataset: str = DATASET, *, num_frames: int = 16, size: tuple[int, int] = (64, 48)
               ) -> Path:
    """The `data.shards` folder of a tiny set (`size` is (width, height)); reused when already made."""
    return synthesize_and_shard(dataset, root, codec="vp9", classes=CLASSES, clips_per_class=CLIPS_PER_CLASS,
                                num_frames=num_frames, width=size[0], height=size[1]).parent


def tiny(shards: Path, out_dir: Path, *extra: str, arch: str = "tsm_w3", cfg: str = "smoke") -> list[str]:
    """--cfg/--set arguments of a tiny run: 4 steps per epoch (16 clips, batch 4), every step logged."""
    sets = [f"data.shards={shards}", f"out_dir={out_dir}", f"model.arch={arch}", "model.depth=18",
            "model.dropout=0.5", "data.num_segments=2", "data.crop_size=32", "data.scale_size=40",
            "data.num_threads=1", "train.batch_size=4", "train.epochs=2", "train.precision=fp32",
            "train.log_every=1", "train.ckpt_every=3", "train.keep_checkpoints=2", "train.progress=false",
            "optim.lr_per_64=0.2", "optim.schedule=cosine", "optim.warmup_epochs=1.0", "eval.batch_size=4",
            "eval.every_epochs=1", *extra]
    return ["--cfg", str(REPO / "launch" / f"{cfg}.yaml")] + [a for s in sets for a in ("--set", s)]


def train_cmd(args: list[str], launcher: list[str] | None = None) -> list[str]:
    if launcher is None:
        return [sys.executable, "train/run.py", *args]
    return [sys.executable, "-m", "accelerate.commands.launch", *launcher, "train/run.py", *args]


def run_train(args: list[str], launcher: list[str] | None = None, timeout: int = 300
              ) -> subprocess.CompletedProcess:
    return run_tool(train_cmd(args, launcher), timeout=timeout)


def read_metrics(out_dir: Path, name: str = "metrics.csv") -> list[dict]:
    return read_csv(out_dir / name)


def losses(out_dir: Path) -> list[tuple[int, str]]:
    """(step, loss exactly as written) per logged step."""
    return [(int(r["step"]), r["loss"]) for r in read_metrics(out_dir)]


def run_until_step_then_signal(args: list[str], out_dir: Path, step: int, sig: int,
                               launcher: list[str] | None = None, pick_pid=None, timeout: float = 300
                               ) -> tuple[int, str]:
    """Start a run, wait until metrics.csv shows `step`, send `sig` (to the process `pick_pid(proc)`
    chooses, default the run itself); returns (exit status, output)."""
    proc = subprocess.Popen(train_cmd(args, launcher), cwd=REPO, env=run_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            rows = losses(out_dir)
            if rows and rows[-1][0] >= step:
                os.kill(pick_pid(proc) if pick_pid else proc.pid, sig)
                break
            time.sleep(0.05)
        out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out


# ----------------------------------------------------------------------------------- checkpoint faults
# (train.checkpoint and torch are imported where used: most test modules need neither)

class WritesMarker:
    """Unpickling this calls open(path, 'w'): it runs code, harmlessly and visibly."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def clone(run_dir: Path, dst: Path) -> Path:
    """A copy of the run's checkpoints made of hard links (cheap); `damage` replaces files, never edits them."""
    from train import checkpoint as ckpt_io
    for src in ckpt_io.checkpoints_root(run_dir).rglob("*"):
        target = dst / src.relative_to(run_dir)
        if src.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, target)
    return dst


def damage(path: Path, change) -> None:
    """Replace `path` by `change(path)`, as a new file (change None: remove it)."""
    data = change(path) if change else None
    path.unlink(missing_ok=True)
    if data is not None:
        path.write_bytes(data)


def forge(ckpt: Path, name: str, data: bytes) -> None:
    """Write a file and record its checksum in COMPLETE, as someone who rewrote the record would."""
    from train import checkpoint as ckpt_io
    path = ckpt / name
    if path.exists():
        path.unlink()
    path.write_bytes(data)
    record = json.loads((ckpt / ckpt_io.MARKER).read_text())
    record["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / ckpt_io.MARKER).unlink()
    (ckpt / ckpt_io.MARKER).write_text(json.dumps(record))


def pickled(obj) -> bytes:
    """`obj` as torch.save writes it."""
    import torch
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------- stage 2's tests

# the teacher's run and the cache's views: 64x64 crops give R18 features of 2 x 512 x 2 x 2 per view
STAGE2 = ("model.depth=18", "data.num_segments=2", "data.crop_size=64", "data.scale_size=64", "data.num_threads=1",
          "train.batch_size=4", "eval.batch_size=4", "train.precision=fp32", "train.progress=false",
          "data.train_views=2", "model.dropout=0.5")


def stage2_overrides(shards: Path, teacher: Path, cache: Path, *extra: str) -> list[str]:
    """The `key=value` settings (over the smoke config) of a cache build or a stage-2 run over `shards`."""
    return [f"data.shards={shards}", f"mfr.teacher={teacher}", f"mfr.cache={cache}", *STAGE2, *extra]


def stage2_sets(shards: Path, teacher: Path, cache: Path, *extra: str) -> list[str]:
    """The same as --cfg/--set arguments."""
    sets = stage2_overrides(shards, teacher, cache, *extra)
    return ["--cfg", str(REPO / "launch" / "smoke.yaml")] + [a for s in sets for a in ("--set", s)]


def cache_cmd(*args: str) -> list[str]:
    return [sys.executable, "train/teacher_cache.py", *args]
