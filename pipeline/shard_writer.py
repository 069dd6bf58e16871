"""Writing one WebDataset tar with its DALI index and its member checksums, byte-identical on every rerun.

Members get fixed metadata (mtime 0, uid/gid 0, mode 0644), so the same samples give the same bytes
and the same sha256; the index is written from the offsets known while writing, in the `v1.2` format
of DALI's `wds2idx` (one line per sample: `ext offset size name` per member), so `fn.readers.webdataset`
reads it. Beside them, `<stem>.crc32.json` holds every member's CRC-32 (zlib's, about a GB/s), which the
loaders check on every read: a flipped byte is an error naming the sample, never training data. The
manifest records the sha256 of all three files. `read_index` and `read_checksums` are the readers;
`index_tar` rewrites the index and checksums of a tar already written (one whose sha256 is trusted).
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import atomic_open, atomic_write
from pipeline.errors import DataError

INDEX_VERSION = "v1.2"
CHECKSUMS_FORMAT = "w3video member crc32 v1"
CHECKSUMS_SUFFIX = ".crc32.json"

# one sample as the writer lays it out: (key, [(ext, data offset, size, crc32), ...])
Row = tuple[str, list[tuple[str, int, int, int]]]


@dataclass(frozen=True)
class ShardInfo:
    """A shard's entry in the manifest: its three files (relative to the shard set) and their hashes."""

    file: str
    index: str
    checksums: str
    samples: int
    bytes: int
    sha256: str
    index_sha256: str
    checksums_sha256: str


def checksums_path(tar_path: Path) -> Path:
    return tar_path.with_suffix(CHECKSUMS_SUFFIX)


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
    """samples: (key, [(ext, bytes), ...]). Writes `<tar>`, its index and its checksums atomically, the
    tar last, so an existing tar always has the other two."""
    rows: list[Row] = []
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
                    parts.append((ext, header_at + tarfile.BLOCKSIZE, len(data), zlib.crc32(data)))
                rows.append((key, parts))
        index_sha, sums_sha = _write_index_and_checksums(tar_path, rows)
    return _info(tar_path, base, len(rows), hashing.digest.hexdigest(), index_sha, sums_sha)


def index_tar(tar_path: Path, base: Path, sha256: str) -> ShardInfo:
    """(Re)write the index and checksums of a tar from its own members, e.g. for a shard set written
    before checksums existed. Only for a tar whose sha256 still matches the one recorded when it was
    written (`sha256`): the checksums then vouch for the bytes the writer wrote."""
    rows: dict[str, list[tuple[str, int, int, int]]] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            key, ext = member.name.split(".", 1)
            data = tar.extractfile(member).read()
            rows.setdefault(key, []).append((ext, member.offset_data, member.size, zlib.crc32(data)))
    index_sha, sums_sha = _write_index_and_checksums(tar_path, list(rows.items()))
    return _info(tar_path, base, len(rows), sha256, index_sha, sums_sha)


def _write_index_and_checksums(tar_path: Path, rows: list[Row]) -> tuple[str, str]:
    index = f"{INDEX_VERSION} {len(rows)}\n" + "".join(
        " ".join(f"{ext} {offset} {size} {key}.{ext}" for ext, offset, size, _ in parts) + "\n"
        for key, parts in rows)
    sums = (f'{{"format": "{CHECKSUMS_FORMAT}", "tar": {json.dumps(tar_path.name)}, "samples": [\n'
            + ",\n".join(json.dumps([key, {ext: crc for ext, _, _, crc in parts}]) for key, parts in rows)
            + "\n]}\n").encode()
    atomic_write(tar_path.with_suffix(".idx"), index.encode())
    atomic_write(checksums_path(tar_path), sums)
    return hashlib.sha256(index.encode()).hexdigest(), hashlib.sha256(sums).hexdigest()


def _info(tar_path: Path, base: Path, samples: int, sha256: str, index_sha: str, sums_sha: str) -> ShardInfo:
    return ShardInfo(file=str(tar_path.relative_to(base)), index=str(tar_path.with_suffix(".idx").relative_to(base)),
                     checksums=str(checksums_path(tar_path).relative_to(base)), samples=samples,
                     bytes=tar_path.stat().st_size, sha256=sha256, index_sha256=index_sha,
                     checksums_sha256=sums_sha)


def read_index(idx_path: Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """Per sample of a `wds2idx` v1.2 index: (key, ext -> (offset, size) of the member's data); a
    DataError naming the line when it is malformed, when a line's member names are not all
    `<key>.<ext>` of one key, or when its header's count differs from its lines."""
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
        key = fields[3][:-len(fields[0]) - 1]
        strays = [fields[i + 3] for i in range(0, len(fields), 4) if fields[i + 3] != f"{key}.{fields[i]}"]
        if strays or len(members) != len(fields) // 4:
            raise DataError(f"{idx_path}:{n}: members {strays or fields[3::4]} are not one sample's "
                            f"`<key>.<ext>` with their ext")
        rows.append((key, members))
    if int(header[1]) != len(rows):
        raise DataError(f"{idx_path}:1: header says {header[1]} samples, the index lists {len(rows)}")
    return rows


def read_checksums(path: Path) -> list[tuple[str, dict[str, int]]]:
    """Per sample of a checksums file: (key, ext -> CRC-32); a DataError when it is malformed."""
    try:
        data = json.loads(Path(path).read_bytes())
        if data.get("format") != CHECKSUMS_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {CHECKSUMS_FORMAT!r}")
        rows = [(str(key), {str(ext): int(crc) for ext, crc in sums.items()}) for key, sums in data["samples"]]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: malformed checksums file ({e})") from None
    return rows
