"""Building the teacher cache: every rank (and every job pointed at the same folder) takes parts one by one,
each under a lock, so that no part is computed twice, none is corrupted, and a killed or requeued build
writes only what is missing. The content of a part depends only on (teacher, shards, view settings), so a
resumed build is byte-identical to an uninterrupted one.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pipeline.atomic import atomic_open, atomic_write
from pipeline.errors import ConfigError, ResourceError
from pipeline.plan import PLAN_VERSION, PlanItem
from train.export import load_trained
from train.feature_store import RecordLayout, encode_record, quantize
from train.teacher_cache import CACHE_JSON, FORMAT, PARTS, VERSION, FeatureCache, identity_differences, part_paths

POLL_S = 2.0


@contextmanager
def try_lock(path: Path, wait: bool = False) -> Iterator[bool]:
    """An flock on ``path``: True when this process holds it (the kernel releases it when the holder dies,
    so a killed builder never leaves a stale lock); with ``wait`` block until it is free."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """A hash of the weights themselves (names, dtypes, shapes, bytes), independent of the file format."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def view_identity(settings, flip: bool, manifest_sha256: str, feature_shape, dtype: str) -> dict[str, Any]:
    """The fields that decide which pixels each cached (key, view) saw, and how it is stored: the student's
    run must match every one of them (the teacher's hash is added by the build)."""
    return {"manifest_sha256": manifest_sha256, "split": settings.split, "seed": settings.seed,
            "num_segments": settings.num_segments, "crop_size": settings.crop_size,
            "scale_size": settings.scale_size, "flip": bool(flip), "train_views": settings.train_views,
            "plan_version": PLAN_VERSION, "feature_shape": list(feature_shape), "dtype": dtype,
            "quantisation": "per (frame, channel): max over (h, w) / 255, float16 scale" if dtype == "uint8"
            else "none"}


def claim_cache(root: Path, identity: dict[str, Any], layout: RecordLayout, parts: list[dict]) -> None:
    """Write cache.json, or check that the one there (another builder's) describes the same cache."""
    (root / PARTS).mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "version": VERSION, "storage": "records", "identity": identity,
            "layout": layout.to_dict(), "parts": parts}
    path = root / CACHE_JSON
    with try_lock(root / ".cache.json.lock", wait=True):
        if path.is_file():
            theirs = json.loads(path.read_text())
            diff = identity_differences(theirs.get("identity", {}), identity)
            if diff or theirs.get("layout") != meta["layout"] or theirs.get("parts") != parts:
                raise ConfigError(f"{root} holds a teacher cache built for other settings:\n  "
                                  + "\n  ".join(diff or ["record layout or parts differ"])
                                  + "\nuse another mfr.cache folder, or delete this one")
        else:
            atomic_write(path, json.dumps(meta, indent=1))


class PartWriter:
    """Writes one part's records in order (clip-major, then view) and marks it complete."""

    def __init__(self, root: Path, name: str, keys: list[str], views: int, layout: RecordLayout):
        self.feat, self.done = part_paths(root, name)
        self.keys, self.views, self.layout = keys, views, layout
        self.digest = hashlib.sha256()
        self.written = 0

    def write_all(self, batches) -> None:
        """``batches``: (keys, view ids, values, scales) in record order; the file appears when complete."""
        with atomic_open(self.feat, "wb") as fh:
            for keys, views, values, scales in batches:
                for j, (key, view) in enumerate(zip(keys, views)):
                    expected = self.keys[self.written // self.views], self.written % self.views
                    if (key, view) != expected:
                        raise RuntimeError(f"part {self.feat.name}: got {key}/{view}, expected {expected}")
                    record = encode_record(key, view, values[j], None if scales is None else scales[j],
                                           self.layout)
                    self.digest.update(record)
                    fh.write(record)
                    self.written += 1
        total = len(self.keys) * self.views
        if self.written != total:
            self.feat.unlink(missing_ok=True)
            raise RuntimeError(f"part {self.feat.name}: wrote {self.written} of {total} records")
        atomic_write(self.done, json.dumps({"keys": self.keys, "views": self.views, "records": total,
                                            "bytes": total * self.layout.record_bytes,
                                            "sha256": self.digest.hexdigest()}, indent=0))


def part_items(shard: int, samples: int, views: int) -> list[PlanItem]:
    return [PlanItem(shard, index, view, True) for index in range(samples) for view in range(views)]


class Builder:
    """One process's share of a build: tries every part, starting at its rank, under per-part locks."""

    def __init__(self, root: Path, loader, teacher, layout: RecordLayout, *, rank: int, autocast,
                 progress: bool, stop=lambda: False):
        self.root, self.loader, self.teacher, self.layout = root, loader, teacher, layout
        self.rank, self.autocast, self.stop = rank, autocast, stop
        self.views = loader.settings.train_views
        self.bar = tqdm(desc=f"teacher cache (rank {rank})", unit="view", disable=not progress, dynamic_ncols=True)
        self.clips = self.bytes = 0
        self.started = time.perf_counter()

    @torch.no_grad()
    def _batches(self, shard: int, samples: int):
        for batch in self.loader.replay(part_items(shard, samples, self.views)):
            valid = batch["valid"].cpu().numpy()
            with self.autocast():
                features = self.teacher(batch["frames"])["features"]
            values, scales = quantize(features[valid], self.layout.dtype)
            keys = [k for k, ok in zip(batch["keys"], valid) if ok]
            yield keys, batch["view_ids"][valid].tolist(), values, scales
            self._count(len(keys))
            if self.stop():
                raise InterruptedError

    def _count(self, records: int) -> None:
        self.clips += records
        self.bytes += records * self.layout.record_bytes
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(records)
        self.bar.set_postfix_str(f"{self.clips / elapsed:.1f} views/s, {self.bytes / elapsed / 2**20:.1f} MB/s",
                                 refresh=False)

    def build_part(self, shard: int) -> bool:
        """Build part ``shard`` if no one has or is; True when it is complete afterwards."""
        f = self.loader.shards.files[shard]
        name = f.path.stem
        feat, done = part_paths(self.root, name)
        if done.is_file():
            return True
        with try_lock(self.root / PARTS / f".{name}.lock") as held:
            if not held:
                return False                           # another process is building it
            if done.is_file():
                return True
            for leftover in (self.root / PARTS).glob(f".{name}.*.tmp*"):   # of a killed holder: we hold the lock
                leftover.unlink(missing_ok=True)
            keys = [self.loader.shards.key(shard, i) for i in range(f.samples)]
            PartWriter(self.root, name, keys, self.views, self.layout).write_all(self._batches(shard, f.samples))
            print(f"built part {name}", flush=True)
            return True

    def run(self, world_size: int) -> None:
        """Every part once by someone: first a pass starting at this rank, then wait for (or take over) the
        parts others hold, until all are complete."""
        n = len(self.loader.shards.files)
        order = [(self.rank + i) % n for i in range(n)] if n else []
        pending = [s for s in order if not self.build_part(s)]
        while pending:
            if self.stop():
                raise InterruptedError
            time.sleep(POLL_S)
            pending = [s for s in pending if not self.build_part(s)]
        self.bar.close()
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        print(f"rank {self.rank}: wrote {self.clips} views in {elapsed:.2f} s ({self.clips / elapsed:.1f} views/s, "
              f"{self.bytes / elapsed / 2**20:.2f} MB/s)", flush=True)


def missing_teacher_hint(cfg) -> str:
    return (f"{cfg.label('mfr.teacher')}: set it to the stage-1 run folder (or a checkpoint folder) whose model "
            f"is the teacher")


def require_cache_settings(cfg) -> None:
    if not cfg["mfr"]["cache"]:
        raise ConfigError(f"{cfg.label('mfr.cache')}: the folder of the teacher cache is not set")
    if cfg["data"]["train_views"] < 1:
        raise ConfigError(f"{cfg.label('data.train_views')}: stage 2 needs a bank of views per clip "
                          f"(e.g. 4); 0 means a fresh view every epoch, which no cache can hold")


def manifest_sha256(shards_dir: Path) -> str:
    path = Path(shards_dir) / "manifest.json"
    if not path.is_file():
        raise ResourceError(f"{path} not found")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def open_finished(root: Path) -> FeatureCache:
    from train.teacher_cache import open_cache
    cache = open_cache(root)
    cache.require_complete()
    return cache


# ---------------------------------------------------------------------------------------- the command


class Teacher:
    """The stage-1 model (checked, finite weights; train/export.py) in eval mode, with the hash of its weights."""

    def __init__(self, path: str | Path, device: torch.device):
        from w3model import ModelConfig
        model, self.checkpoint, state = load_trained(path)
        self.config = ModelConfig.from_dict(dict(state["model"], pretrained=None))
        self.sha256 = state_dict_sha256(model.state_dict())
        self.model = model.to(device).eval().requires_grad_(False)


def feature_shape(config, crop_size: int) -> tuple[int, int, int, int]:
    """(T, C, h, w) of a model's refined features at this crop, from a forward pass on the meta device."""
    from w3model import VideoNet

    with torch.device("meta"):
        model = VideoNet(config).eval()
        out = model(torch.zeros(1, config.num_segments, 3, crop_size, crop_size))["features"]
    return tuple(int(d) for d in out.shape[1:])


def process_placement() -> tuple[int, int, torch.device]:
    """(rank, world size, device) from the launcher's environment (torchrun, accelerate, srun); a build
    needs no process group: processes meet only through the locks in the cache folder."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if torch.cuda.is_available():
        return rank, world, torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return rank, world, torch.device("cpu")


def build_from_config(cfg_path: str, overrides: list[str]) -> int:
    """`python train/teacher_cache.py build`: this process's share of the cache; exit 0 once it is complete,
    75 after SIGTERM/SIGUSR1 (rerun to continue)."""
    from contextlib import nullcontext

    from pipeline.cli import EXIT_OK, EXIT_PREEMPTED
    from pipeline.loader import build_loader
    from train.config import load_config, shards_dir
    from train.preemption import PreemptionWatch

    cfg = load_config(cfg_path, overrides)
    require_cache_settings(cfg)
    if not cfg["mfr"]["teacher"]:
        raise ConfigError(missing_teacher_hint(cfg))
    rank, world, device = process_placement()
    root = Path(cfg["mfr"]["cache"])
    teacher = Teacher(cfg["mfr"]["teacher"], device)
    if teacher.config.num_segments != cfg["data"]["num_segments"]:
        raise ConfigError(f"{cfg.label('data.num_segments')}: {cfg['data']['num_segments']}, but the teacher "
                          f"{teacher.checkpoint} was trained with {teacher.config.num_segments} segments")
    loader = build_loader(shards_dir(cfg), cfg.loaders["cache"], rank=rank, world_size=world, device=device)
    settings = loader.settings
    layout = RecordLayout(feature_shape(teacher.config, settings.crop_size), cfg["mfr"]["cache_dtype"])
    identity = {"teacher_sha256": teacher.sha256,
                **view_identity(settings, settings.flip, manifest_sha256(loader.shards.root), layout.shape,
                                layout.dtype)}
    parts = [{"name": f.path.stem, "samples": f.samples} for f in loader.shards.files]
    claim_cache(root, identity, layout, parts)
    bf16 = cfg["train"]["precision"] == "bf16" and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else nullcontext
    with PreemptionWatch() as watch:
        builder = Builder(root, loader, teacher.model, layout, rank=rank, autocast=autocast,
                          progress=cfg["train"]["progress"] and rank == 0, stop=lambda: watch.received != 0)
        try:
            builder.run(world)
        except InterruptedError:
            print(f"rank {rank}: stopped by a signal; complete parts are kept, rerun to build the rest",
                  flush=True)
            return EXIT_PREEMPTED
    if rank == 0:
        cache = open_finished(root)
        print(f"teacher cache {root}: complete, {len(cache.parts)} parts, {cache.nbytes / 2**30:.3f} GiB "
              f"({layout.record_bytes / 2**20:.3f} MiB per view)", flush=True)
    return EXIT_OK
