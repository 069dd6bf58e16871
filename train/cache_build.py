"""Building the teacher cache: every rank (and every job pointed at the same folder) takes parts one by one,
each under a lock, so that no part is computed twice, none is corrupted, and a killed or requeued build
writes only what is missing. The content of a part depends only on (teacher, shards, view settings), so a
resumed build is byte-identical to an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pipeline.atomic import atomic_open, atomic_write
from pipeline.errors import ConfigError, ResourceError
from pipeline.locking import try_lock
from pipeline.plan import PLAN_VERSION, PlanItem
from train.feature_store import RecordLayout, encode_record, quantize
from train.teacher_cache import CACHE_JSON, FORMAT, PARTS, VERSION, FeatureCache, identity_differences, part_paths

POLL_S = 2.0


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """A hash of the weights themselves (names, dtypes, shapes, bytes), independent of the file format."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
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
        self.bar = tqdm(desc=f"teacher cache (rank {rank})", unit="clip", disable=not progress, dynamic_ncols=True)
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
            keys = [self.loader.shards.key(shard, i) for i in range(f.samples)]
            PartWriter(self.root, name, keys, self.views, self.layout).write_all(self._batches(shard, f.samples))
            return True

    def run(self, world_size: int) -> None:
        """Every part once by someone: first a pass starting at this rank, then wait for (or take over) the
        parts others hold, until all are complete."""
        n = len(self.loader.shards.files)
        order = [(self.rank + i) % n for i in range(n)] if n else []
        pending = [s for s in order if not self.build_part(s)]
        while pending:
            time.sleep(POLL_S)
            pending = [s for s in pending if not self.build_part(s)]
        self.bar.close()


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
