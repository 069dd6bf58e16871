"""One split of a shard directory: its manifest, its files checked up front, and random access to any sample
by (shard, position) through the DALI index beside each tar, every member checked against its CRC-32. Both
loader backends and the teacher cache read shards through this.

What is trusted, and how: the manifest records the sha256 of each shard's index and checksums file,
checked when the split is opened (they are small); the index gives each member's offset, the checksums its
CRC-32, checked on every read (`verify_members`), so a changed byte is an error naming the sample, never
training data. A sample's JSON must name the key the index gives it (pipeline/sample_json.py).
"""
from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, DataError, ResourceError
from pipeline.manifest import MANIFEST, read_manifest, shard_command
from pipeline.sample_json import parse_meta
from pipeline.shard_writer import read_checksums, read_index


@dataclass(frozen=True)
class ShardFile:
    path: Path
    index_path: Path
    checksums_path: Path | None     # None: written before member checksums existed
    samples: int
    bytes: int
    index_sha256: str | None
    checksums_sha256: str | None


class SampleError(DataError):
    """Bad data in one sample: ``<shard>: key <key>: <reason>``; ``reason`` alone goes into skip logs."""

    def __init__(self, shard: Path | str, key: str, reason: str):
        super().__init__(f"{shard}: key {key}: {reason}")
        self.shard, self.key, self.reason = str(shard), key, reason


@dataclass(frozen=True)
class _Table:
    """A shard's index and checksums, parsed: per sample its key, member offsets/sizes and CRC-32s."""

    keys: list[str]
    members: list[dict[str, tuple[int, int]]]
    crcs: list[dict[str, int]]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ShardSet:
    """``split_label`` names the split setting in errors (the trainer: ``data.train_split`` / ``eval.split``)."""

    # Members are checked against their CRC-32 on every read; only benchmarks/loader_throughput.py turns
    # this off, to measure what the check costs.
    verify_members = True

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
        self.files = [ShardFile(self.root / e["file"], self.root / e["index"],
                                self.root / e["checksums"] if "checksums" in e else None, int(e["samples"]),
                                int(e["bytes"]), e.get("index_sha256"), e.get("checksums_sha256"))
                      for e in entries]
        self._check_files()
        self._tables: dict[int, _Table] = {}
        self._handles: dict[int, Any] = {}

    # ------------------------------------------------------------------------------------ opening

    def _check_files(self) -> None:
        """Missing, truncated or changed shard files fail here, all listed at once, rather than mid-epoch."""
        if any(f.checksums_path is None for f in self.files):
            raise ResourceError(
                f"{self.root / MANIFEST}: these shards were written before member checksums existed, so the "
                f"loaders cannot check their bytes. Rerun the command that wrote them: it keeps every tar "
                f"whose sha256 still matches and adds the index and checksums files:\n  "
                + shard_command(self.manifest.get("options", {})))
        missing, damaged = [], []
        for f in self.files:
            if not f.path.is_file():
                missing.append(f"{f.path} (missing)")
            elif f.path.stat().st_size != f.bytes:
                damaged.append(f"{f.path} (truncated or changed: {f.path.stat().st_size} bytes, manifest says "
                               f"{f.bytes})")
            wds2idx = f"; `wds2idx {f.path} {f.index_path}` recreates it"
            for path, sha, how in ((f.index_path, f.index_sha256, wds2idx), (f.checksums_path, f.checksums_sha256, "")):
                if not path.is_file():
                    missing.append(f"{path} (missing{how})")
                elif _sha256(path) != sha:
                    damaged.append(f"{path} (changed since the shard was written: sha256 differs from the manifest)")
        if missing or damaged:
            kind = ResourceError if missing else DataError
            raise kind(f"{self.root / MANIFEST} split {self.split!r}: {len(missing) + len(damaged)} shard "
                       f"file(s) unusable; rerun the shard command (it rewrites what is missing or changed) "
                       f"or restore them:\n  " + "\n  ".join(missing + damaged))

    def _table(self, shard: int) -> _Table:
        """The shard's index and checksums, parsed once; each file's bytes are the ones the manifest vouches
        for, and both list the same samples and members in the same order."""
        if shard not in self._tables:
            f = self.files[shard]
            for path, sha in ((f.index_path, f.index_sha256), (f.checksums_path, f.checksums_sha256)):
                if _sha256(path) != sha:
                    raise DataError(f"{path}: changed since the shard was written (sha256 differs from "
                                    f"{self.root / MANIFEST})")
            rows, sums = read_index(f.index_path), read_checksums(f.checksums_path)
            if len(rows) != f.samples:
                raise DataError(f"{f.index_path}: indexes {len(rows)} samples, manifest says {f.samples}")
            for (key, members), (sum_key, crcs) in zip(rows, sums, strict=False):
                if key != sum_key or set(members) != set(crcs):
                    raise DataError(f"{f.index_path} and {f.checksums_path} disagree: sample {key!r} with "
                                    f"{sorted(members)} against {sum_key!r} with {sorted(crcs)}")
            if len(sums) != len(rows):
                raise DataError(f"{f.checksums_path}: lists {len(sums)} samples, the index {len(rows)}")
            self._tables[shard] = _Table([k for k, _ in rows], [m for _, m in rows], [c for _, c in sums])
        return self._tables[shard]

    # ------------------------------------------------------------------------------------ samples

    @property
    def shard_sizes(self) -> list[int]:
        return [f.samples for f in self.files]

    def members(self, shard: int) -> list[dict[str, tuple[int, int]]]:
        """Per sample of a shard: extension -> (offset, size), from the DALI index beside the tar."""
        return self._table(shard).members

    def key(self, shard: int, index: int) -> str:
        """The sample's key, from the member names in the index (readable even when its JSON is not)."""
        return self._table(shard).keys[index]

    def describe(self, shard: int, index: int) -> str:
        """The sample's key for messages, or its position when even the index cannot be read."""
        try:
            return self.key(shard, index)
        except DataError:
            return f"#{index}"

    def _pread(self, shard: int, offset: int, size: int) -> bytes:
        """Bytes at ``offset`` of a shard's tar; positional, so processes forked with the handle open (DALI's
        source workers) and the parent never move each other's file position."""
        if shard not in self._handles:
            self._handles[shard] = open(self.files[shard].path, "rb")
        return os.pread(self._handles[shard].fileno(), size, offset)

    def read(self, shard: int, index: int) -> tuple[dict, bytes]:
        """(metadata JSON, encoded video) of one sample, read by offset without scanning the tar."""
        entry = self.members(shard)[index]
        data = {ext: self._pread(shard, offset, size) for ext, (offset, size) in entry.items()}
        return self.sample(shard, index, self.key(shard, index), data)

    def read_meta(self, shard: int, index: int) -> dict:
        """The metadata alone, its member CRC-checked: enough to plan a sample whose video bytes another
        process reads (and checks) with ``read``."""
        f, key, entry = self.files[shard], self.key(shard, index), self.members(shard)[index]
        if "json" not in entry:
            raise SampleError(f.path, key, f"lacks a json or video member (has {sorted(entry)})")
        data = self._pread(shard, *entry["json"])
        self._check_crc(shard, index, key, "json", data)
        try:
            return parse_meta(data, key)
        except DataError as e:
            raise SampleError(f.path, key, str(e)) from None

    def sample(self, shard: int, index: int, key: str, data: dict[str, bytes]) -> tuple[dict, bytes]:
        """(metadata, video) of sample ``index`` from its members' bytes, however they were read (the
        reference loader streams whole tars): the key must be the one the index lists at that position,
        every member must match its CRC-32, and the JSON must be sound (SampleError otherwise)."""
        f, table = self.files[shard], self._table(shard)
        expected = table.keys[index]
        if key != expected:
            raise SampleError(f.path, key, f"found at position {index}, where the index lists {expected!r}")
        crcs = table.crcs[index]
        if set(data) != set(crcs):
            raise SampleError(f.path, key, f"has members {sorted(data)}, its checksums list {sorted(crcs)}")
        for ext, value in data.items():
            self._check_crc(shard, index, key, ext, value)
        video_ext = self.video_ext if self.video_ext in data else next((e for e in data if e != "json"), None)
        if "json" not in data or video_ext is None:
            raise SampleError(f.path, key, f"lacks a json or video member (has {sorted(data)})")
        try:
            meta = parse_meta(data["json"], key)
        except DataError as e:
            raise SampleError(f.path, key, str(e)) from None
        return meta, data[video_ext]

    def _check_crc(self, shard: int, index: int, key: str, ext: str, value: bytes) -> None:
        if self.verify_members and zlib.crc32(value) != self._table(shard).crcs[index][ext]:
            raise SampleError(self.files[shard].path, key, f"its {ext} member fails its CRC-32 check (the bytes "
                                                           f"changed after the shard was written)")

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __getstate__(self):  # open files do not travel to DataLoader workers
        return {**self.__dict__, "_handles": {}}
