"""One split of a shard directory: its manifest, its files checked up front, and random access to any sample
by (shard, position) through the DALI index beside each tar. Both loader backends and the teacher cache read
shards through this."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, DataError, ResourceError
from pipeline.manifest import MANIFEST, read_manifest
from pipeline.shard_writer import read_index


@dataclass(frozen=True)
class ShardFile:
    path: Path
    index_path: Path
    samples: int
    bytes: int


class ShardSet:
    """``split_label`` names the split setting in errors (the trainer: ``data.train_split`` / ``eval.split``)."""

    def __init__(self, shards_dir: str | os.PathLike, split: str, split_label: str = "split"):
        self.root = Path(shards_dir)
        self.manifest = read_manifest(self.root)
        try:
            entries = self.manifest["splits"][split]["shards"]
        except KeyError:
            known = ", ".join(self.manifest.get("splits", {})) or "none"
            raise ConfigError(f"{split_label}: {split!r} is not in {self.root / MANIFEST} (splits: {known})") from None
        self.split = split
        self.dataset = self.manifest.get("dataset", "")
        self.codec = self.manifest.get("codec", "")
        self.video_ext = self.manifest.get("video_ext", "")
        self.heads: dict[str, int] = dict(self.manifest.get("heads", {}))
        self.classes: dict[str, list] = dict(self.manifest.get("classes", {}))
        self.files = [ShardFile(self.root / e["file"], self.root / e["index"], int(e["samples"]), int(e["bytes"]))
                      for e in entries]
        self._check_files()
        self._members: dict[int, list[dict[str, tuple[int, int]]]] = {}
        self._keys: dict[int, list[str]] = {}
        self._handles: dict[int, Any] = {}

    def _check_files(self) -> None:
        """Missing or truncated shards fail here, all listed at once, rather than mid-epoch."""
        missing, damaged = [], []
        for f in self.files:
            if not f.path.is_file():
                missing.append(f"{f.path} (missing)")
            elif f.path.stat().st_size != f.bytes:
                damaged.append(f"{f.path} (truncated or changed: {f.path.stat().st_size} bytes, manifest says "
                               f"{f.bytes})")
            if not f.index_path.is_file():
                missing.append(f"{f.index_path} (missing index; recreate it with `wds2idx {f.path} {f.index_path}`)")
        if missing or damaged:
            kind = ResourceError if missing else DataError
            raise kind(f"{self.root / MANIFEST} split {self.split!r}: {len(missing) + len(damaged)} shard "
                       f"file(s) unusable; reshard or restore them:\n  " + "\n  ".join(missing + damaged))

    @property
    def shard_sizes(self) -> list[int]:
        return [f.samples for f in self.files]

    def members(self, shard: int) -> list[dict[str, tuple[int, int]]]:
        """Per sample of a shard: extension -> (offset, size), from the DALI index beside the tar."""
        if shard not in self._members:
            f = self.files[shard]
            rows = read_index(f.index_path)
            table = [members for _, members in rows]
            self._keys[shard] = [key for key, _ in rows]
            if len(table) != f.samples:
                raise DataError(f"{f.index_path}: indexes {len(table)} samples, manifest says {f.samples} for "
                                f"{f.path}; recreate it with `wds2idx {f.path} {f.index_path}`")
            self._members[shard] = table
        return self._members[shard]

    def key(self, shard: int, index: int) -> str:
        """The sample's key, from the member names in the index (readable even when its JSON is not)."""
        self.members(shard)
        return self._keys[shard][index]

    def describe(self, shard: int, index: int) -> str:
        """The sample's key for messages, or its position when even the index cannot be read."""
        try:
            return self.key(shard, index)
        except DataError:
            return f"#{index}"

    def read(self, shard: int, index: int) -> tuple[dict, bytes]:
        """(metadata JSON, encoded video) of one sample, read by offset without scanning the tar."""
        f = self.files[shard]
        entry = self.members(shard)[index]
        if shard not in self._handles:
            self._handles[shard] = open(f.path, "rb")
        handle = self._handles[shard]

        def member(ext: str) -> bytes:
            offset, size = entry[ext]
            handle.seek(offset)
            return handle.read(size)

        video_ext = self.video_ext if self.video_ext in entry else next((e for e in entry if e != "json"), None)
        if "json" not in entry or video_ext is None:
            raise DataError(f"{f.path}: sample {self.key(shard, index)} lacks a json or video member "
                            f"(has {sorted(entry)})")
        try:
            meta = json.loads(member("json"))
        except json.JSONDecodeError as e:
            raise DataError(f"{f.path}: sample {self.key(shard, index)}: metadata is not valid JSON ({e})") from e
        return meta, member(video_ext)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __getstate__(self):  # open files do not travel to DataLoader workers
        return {**self.__dict__, "_handles": {}}
