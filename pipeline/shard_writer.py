"""Writing one WebDataset tar and its DALI index, byte-identical on every rerun.

Members get fixed metadata (mtime 0, uid/gid 0, mode 0644), so the same samples give the same bytes
and the same sha256; the index is written from the offsets known while writing, in the `v1.2` format
of DALI's `wds2idx` (one line per sample: `ext offset size name` per member). `read_index` is its
reader, for anything that reads samples by offset.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import atomic_open, atomic_write
from pipeline.errors import DataError

INDEX_VERSION = "v1.2"


@dataclass(frozen=True)
class ShardInfo:
    file: str
    index: str
    samples: int
    bytes: int
    sha256: str


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class _HashingFile:
    """Passes writes to `fh` and hashes them on the way, so a shard's sha256 needs no second read."""

    def __init__(self, fh):
        self.fh, self.digest = fh, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.fh.write(data)

    def tell(self) -> int:
        return self.fh.tell()


def write_shard(tar_path: Path, samples: Iterable[tuple[str, list[tuple[str, bytes]]]],
                base: Path) -> ShardInfo:
    """samples: (key, [(ext, bytes), ...]). Writes `<tar>` and `<tar minus .tar>.idx` atomically, the
    index first and the tar last, so an existing tar always has its index."""
    idx_path = tar_path.with_suffix(".idx")
    lines = []
    with atomic_open(tar_path) as raw:
        hashing = _HashingFile(raw)
        with tarfile.open(fileobj=hashing, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for key, members in samples:
                parts = []
                for ext, data in members:
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    header_at = tar.offset
                    tar.addfile(info, io.BytesIO(data))
                    parts.append(f"{ext} {header_at + tarfile.BLOCKSIZE} {len(data)} {key}.{ext}")
                lines.append(" ".join(parts))
        atomic_write(idx_path, f"{INDEX_VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines))
    return ShardInfo(file=str(tar_path.relative_to(base)), index=str(idx_path.relative_to(base)),
                     samples=len(lines), bytes=tar_path.stat().st_size, sha256=hashing.digest.hexdigest())


def read_index(idx_path: Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """Per sample of a `wds2idx` v1.2 index: (key, ext -> (offset, size) of the member's data); a
    DataError naming the line when it is malformed or its header's count differs from its lines."""
    lines = Path(idx_path).read_text().splitlines()
    header = lines[0].split() if lines else []
    if len(header) != 2 or not header[1].isdigit():
        raise DataError(f"{idx_path}:1: expected '<version> <samples>', got {(lines or [''])[0]!r}")
    rows = []
    for n, line in enumerate(lines[1:], 2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) % 4:
            raise DataError(f"{idx_path}:{n}: expected groups of 'ext offset size name', got {line!r}")
        try:
            members = {fields[i]: (int(fields[i + 1]), int(fields[i + 2])) for i in range(0, len(fields), 4)}
        except ValueError:
            raise DataError(f"{idx_path}:{n}: offsets and sizes must be integers, got {line!r}") from None
        rows.append((fields[3][:-len(fields[0]) - 1], members))
    if int(header[1]) != len(rows):
        raise DataError(f"{idx_path}:1: header says {header[1]} samples, the index lists {len(rows)}")
    return rows
