"""The teacher-feature cache of stage 2 (MFR, paper §3.4 Eq. 9): written once by every rank, read by every
student run instead of running the teacher (docs/ARCHITECTURE.md §5).

    python train/teacher_cache.py build --cfg launch/sthv2_mfr.yaml [--set k=v ...]   # also accelerate/SLURM
    python train/teacher_cache.py verify DIR          # every record's checksum; exit 1 naming the bad ones
    python train/teacher_cache.py info DIR [--json]   # identity, V, dtype, shape, size, completeness
    python train/teacher_cache.py export DIR OUT      # the same cache in FFCV's format (train/ffcv_store.py)

    from train.teacher_cache import open_cache
    open_cache(DIR).read(keys, view_ids)              # float32 (B, T, C, h, w)

A cache folder holds ``cache.json`` (identity, record layout, the expected parts) and ``parts/``: per data
shard of the training split, ``<shard>.feat`` (fixed-size records, train/feature_store.py) and
``<shard>.json`` (its keys, size and sha256), written in that order, each atomically, so a part is either
complete or absent and a killed build resumes part by part.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import cli  # first: keeps train/ off sys.path when run by path

import numpy as np
import torch

from pipeline.errors import ConfigError, DataError, ResourceError
from train.feature_store import RecordLayout, decode_record, dequantize

CACHE_JSON = "cache.json"
PARTS = "parts"
FORMAT = "w3-teacher-feature-cache"
VERSION = 1


SUFFIXES = {"records": ".feat", "ffcv": ".beton"}


def part_paths(root: Path, name: str, storage: str = "records") -> tuple[Path, Path]:
    """(data file, completion JSON) of part ``name``."""
    return root / PARTS / f"{name}{SUFFIXES[storage]}", root / PARTS / f"{name}.json"


def read_json_file(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ResourceError(f"{path} not found: {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: malformed JSON ({err})") from None


def identity_differences(cached: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """'field: cache has A, this run has B' for every field that differs."""
    return [f"{k}: cache has {cached.get(k)!r}, this run has {wanted.get(k)!r}"
            for k in sorted(set(cached) | set(wanted)) if cached.get(k) != wanted.get(k)]


@dataclass(frozen=True)
class Part:
    name: str
    samples: int


class FeatureCache:
    """A cache folder opened for reading (read-only; any number of processes may read one cache)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        meta = read_json_file(self.root / CACHE_JSON, "not a teacher cache (build one with `python "
                              "train/teacher_cache.py build --cfg <stage-2 config>`)")
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise DataError(f"{self.root / CACHE_JSON}: not a {FORMAT} v{VERSION} (format "
                            f"{meta.get('format')!r} v{meta.get('version')!r})")
        self.meta = meta
        self.storage = meta.get("storage", "records")
        if self.storage not in SUFFIXES:
            raise DataError(f"{self.root / CACHE_JSON}: storage {self.storage!r} is not one of {', '.join(SUFFIXES)}")
        self.identity: dict[str, Any] = meta["identity"]
        self.layout = RecordLayout(tuple(meta["layout"]["shape"]), meta["layout"]["dtype"])
        self.views = int(self.identity["train_views"])
        self.parts = [Part(p["name"], int(p["samples"])) for p in meta["parts"]]
        self._where: dict[str, tuple[int, int]] = {}       # key -> (part, position), complete parts only
        self._complete: list[bool] = [self._load_part(i) for i in range(len(self.parts))]
        self._fds: dict[int, int] = {}
        self._ffcv: dict[int, Any] = {}
        self._lock = threading.Lock()

    def path(self, part: int) -> Path:
        return part_paths(self.root, self.parts[part].name, self.storage)[0]

    # ------------------------------------------------------------------------------------ bookkeeping

    def _load_part(self, i: int) -> bool:
        part = self.parts[i]
        feat, done = part_paths(self.root, part.name, self.storage)
        if not done.is_file():
            return False
        entry = read_json_file(done, "")
        keys = entry.get("keys", [])
        expected = len(keys) * self.views * self.layout.record_bytes
        size_ok = feat.is_file() and (self.storage != "records" or feat.stat().st_size == expected)
        if len(keys) != part.samples or not size_ok:
            size = feat.stat().st_size if feat.is_file() else "no file"
            raise DataError(f"{feat}: {size} bytes for {len(keys)} clips x {self.views} views, expected "
                            f"{expected} ({part.samples} clips); delete {feat} and {done} and rerun the build")
        for position, key in enumerate(keys):
            self._where[key] = (i, position)
        return True

    @property
    def complete(self) -> bool:
        return all(self._complete)

    def missing_parts(self) -> list[str]:
        return [p.name for p, ok in zip(self.parts, self._complete) if not ok]

    def require_complete(self) -> None:
        missing = self.missing_parts()
        if missing:
            raise ResourceError(f"teacher cache {self.root} is incomplete: {len(missing)} of {len(self.parts)} "
                                f"parts missing (first: {missing[0]}); finish it with `python "
                                f"train/teacher_cache.py build --cfg <the stage-2 config>`")

    def check_identity(self, wanted: dict[str, Any], source: str) -> None:
        """ConfigError naming every field in which this run (``source``: its config) differs from the cache."""
        diff = identity_differences(self.identity, wanted)
        if diff:
            raise ConfigError(f"teacher cache {self.root} was built for other settings than {source}:\n  "
                              + "\n  ".join(diff) + "\nbuild a cache for these settings (another mfr.cache) "
                              "or run with the cache's")

    @property
    def nbytes(self) -> int:
        return sum(self.path(i).stat().st_size for i, ok in enumerate(self._complete) if ok)

    # ------------------------------------------------------------------------------------ reading

    def _fd(self, part: int) -> int:
        with self._lock:
            if part not in self._fds:
                self._fds[part] = os.open(self.path(part), os.O_RDONLY)
            return self._fds[part]

    def locate(self, key: str, view: int) -> tuple[int, int]:
        """(part, record number) of a clip's view; DataError for a key or view the cache does not hold."""
        if key not in self._where:
            raise DataError(f"teacher cache {self.root} holds no clip {key!r}" +
                            ("" if self.complete else " (the cache is incomplete)"))
        if not 0 <= view < self.views:
            raise DataError(f"teacher cache {self.root}: view {view} of {key!r} outside 0..{self.views - 1} "
                            f"(data.train_views={self.views})")
        part, position = self._where[key]
        return part, position * self.views + view

    def read_record(self, key: str, view: int) -> tuple[np.ndarray, np.ndarray | None]:
        """One view's stored (values, scales), checked (DataError naming part, key and view)."""
        part, record = self.locate(key, view)
        if self.storage == "ffcv":
            return self._ffcv_part(part).record(record, key, view)
        size = self.layout.record_bytes
        data = bytearray(size)          # writable, so the arrays decoded from it are too (no copy)
        got = os.preadv(self._fd(part), [data], record * size)
        data = data[:got] if got < size else data
        return decode_record(data, key, view, self.layout, f"{self.path(part)} record {record}")

    def _ffcv_part(self, part: int):
        with self._lock:
            if part not in self._ffcv:
                from train.ffcv_store import FfcvPart
                self._ffcv[part] = FfcvPart(self.path(part), self.layout)
            return self._ffcv[part]

    def read_raw(self, keys: list[str], view_ids) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stored values (B, T, C, h, w) and scales (B, T, C) (None for float16): dequantize on the device."""
        records = [self.read_record(k, int(v)) for k, v in zip(keys, view_ids)]
        values = torch.from_numpy(np.stack([r[0] for r in records]))
        scales = torch.from_numpy(np.stack([r[1] for r in records])) if records and records[0][1] is not None \
            else None
        return values, scales

    def read(self, keys: list[str], view_ids) -> torch.Tensor:
        """float32 (B, T, C, h, w): the teacher's refined features y of each (key, view id)."""
        return dequantize(*self.read_raw(keys, view_ids))

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._ffcv.clear()

    def __getstate__(self):        # file descriptors do not travel to other processes
        state = dict(self.__dict__, _fds={}, _ffcv={})
        state.pop("_lock")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()


def open_cache(root: str | os.PathLike) -> FeatureCache:
    return FeatureCache(root)


# ---------------------------------------------------------------------------------------- verify / info


def verify(root: str | os.PathLike) -> list[str]:
    """Every part's file hash and every record's checksum, key and view; the problems found, in order."""
    from pipeline.shard_writer import sha256_file

    cache = open_cache(root)
    problems = [f"{part_paths(cache.root, name, cache.storage)[0]}: missing (incomplete cache)"
                for name in cache.missing_parts()]
    for i, part in enumerate(cache.parts):
        if not cache._complete[i]:
            continue
        feat, done = part_paths(cache.root, part.name, cache.storage)
        entry = read_json_file(done, "")
        if sha256_file(feat) != entry.get("sha256"):
            problems.append(f"{feat}: sha256 differs from {done.name}")
        for key in entry["keys"]:
            for view in range(cache.views):
                try:
                    cache.read_record(key, view)
                except DataError as err:
                    problems.append(str(err))
    cache.close()
    return problems


def info(root: str | os.PathLike) -> dict[str, Any]:
    cache = open_cache(root)
    done = sum(cache._complete)
    clips = sum(p.samples for p, ok in zip(cache.parts, cache._complete) if ok)
    return {"root": str(cache.root), "identity": cache.identity, "views": cache.views,
            "dtype": cache.layout.dtype, "shape": list(cache.layout.shape), "record_bytes": cache.layout.record_bytes,
            "bytes": cache.nbytes, "parts_complete": done, "parts": len(cache.parts), "clips": clips,
            "records": clips * cache.views, "complete": cache.complete, "storage": cache.meta.get("storage")}


def _print_info(summary: dict[str, Any]) -> None:
    print(f"{summary['root']}: {'complete' if summary['complete'] else 'INCOMPLETE'}, {summary['parts_complete']}"
          f" of {summary['parts']} parts, {summary['clips']} clips x {summary['views']} views = "
          f"{summary['records']} records, {summary['bytes'] / 2**30:.3f} GiB")
    print(f"record: {summary['dtype']} {tuple(summary['shape'])} = {summary['record_bytes'] / 2**20:.3f} MiB "
          f"per view; storage {summary['storage']}")
    for key, value in summary["identity"].items():
        print(f"  {key}: {value}")


@cli.tool("train/teacher_cache.py")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train/teacher_cache.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="compute the teacher's features of every training clip's V views")
    build.add_argument("--cfg", required=True, help="the stage-2 experiment YAML (mfr.teacher, mfr.cache)")
    build.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sub.add_parser("verify", help="check every record").add_argument("dir")
    copy = sub.add_parser("export", help="write a complete cache again in FFCV's format (read by open_cache like any cache)")
    copy.add_argument("dir")
    copy.add_argument("out")
    show = sub.add_parser("info", help="identity and completeness")
    show.add_argument("dir")
    show.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "build":
        from train.cache_build import build_from_config
        return build_from_config(args.cfg, args.overrides)
    if args.command == "export":
        from train.ffcv_store import export
        out = export(open_cache(args.dir), Path(args.out))
        print(f"{out}: FFCV copy of {args.dir} ({info(out)['bytes'] / 2**20:.1f} MiB)")
        return cli.EXIT_OK
    if args.command == "verify":
        problems = verify(args.dir)
        for line in problems:
            print(f"FAIL {line}")
        print(f"{args.dir}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        return cli.EXIT_FINDINGS if problems else cli.EXIT_OK
    summary = info(args.dir)
    print(json.dumps(summary, indent=1)) if args.json else _print_info(summary)
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
