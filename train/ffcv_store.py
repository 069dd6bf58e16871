"""The teacher cache in FFCV's file format (`pip install -e .[ffcv]`): one `.beton` per part, sample `i * V + v`
holding view v of the part's i-th clip in three NDArray fields: the stored values, the float16 scales (as
int16: FFCV's compiled code refuses float16) and (key hash, view, CRC-32) so that every read is checked as
the default records are. Written from a complete default cache (`python train/teacher_cache.py export DIR
OUT`) and read behind the same `open_cache(OUT).read` through FFCV's own `Reader` (the file's layout: a
field's data pointer per sample) and a memory map; FFCV's `Loader` serves the same files in any index order
(benchmarks/mfr_cache.py measures both).
"""
from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_write
from pipeline.errors import DataError, ResourceError
from train.feature_store import RecordLayout, key_hash

SUFFIX = ".beton"


def _require_ffcv():
    try:
        import ffcv  # noqa: F401
    except ImportError as err:
        raise ResourceError(f"FFCV storage: FFCV is not installed ({err}); `bash launch/install.sh --ffcv` "
                            f"installs it with its system packages, or use the default storage") from None


def fields(layout: RecordLayout) -> dict:
    from ffcv.fields import NDArrayField

    t, c, _, _ = layout.shape
    values = np.dtype("uint8") if layout.dtype == "uint8" else np.dtype("int16")
    out = {"values": NDArrayField(values, layout.shape), "meta": NDArrayField(np.dtype("int64"), (3,))}
    if layout.dtype == "uint8":
        out["scales"] = NDArrayField(np.dtype("int16"), (t, c))
    return out


def page_size(layout: RecordLayout) -> int:
    """FFCV allocates in pages (2 MiB at least): room for about 8 records, so little is left empty at a
    page's end (FFCV's default, 8 MiB, would make a tiny cache mostly padding)."""
    wanted = 8 * layout.record_bytes
    return min(max(1 << 21, 1 << (wanted - 1).bit_length()), 1 << 23)


def _check(values: np.ndarray, scales: np.ndarray | None) -> int:
    return zlib.crc32(values.tobytes() + (scales.tobytes() if scales is not None else b""))


class _Part:
    """A part's records as FFCV's indexed dataset (the writer asks for samples by index)."""

    def __init__(self, read_record, keys: list[str], views: int, layout: RecordLayout):
        self.read_record, self.keys, self.views, self.layout = read_record, keys, views, layout

    def __len__(self) -> int:
        return len(self.keys) * self.views

    def __getitem__(self, i: int):
        key, view = self.keys[i // self.views], i % self.views
        values, scales = self.read_record(key, view)
        meta = np.array([np.int64(np.uint64(key_hash(key)).view(np.int64)), view, _check(values, scales)], np.int64)
        stored = values if self.layout.dtype == "uint8" else values.view(np.int16)
        return (stored, meta) + ((scales.view(np.int16),) if scales is not None else ())


def write_part(path: Path, cache, name: str, keys: list[str]) -> dict:
    """One part of `cache` (a FeatureCache of records) as `path` (.beton); returns its completion record."""
    _require_ffcv()
    from ffcv.writer import DatasetWriter

    spec = fields(cache.layout)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = DatasetWriter(str(tmp), spec, page_size=page_size(cache.layout), num_workers=1)
    writer.from_indexed_dataset(_Part(cache.read_record, keys, cache.views, cache.layout), chunksize=64)
    tmp.replace(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"keys": keys, "views": cache.views, "records": len(keys) * cache.views, "sha256": digest}


class FfcvPart:
    """Reads records of one `.beton` by sample index, checking each against its key, view and CRC-32."""

    def __init__(self, path: Path, layout: RecordLayout):
        _require_ffcv()
        from ffcv.reader import Reader

        self.path, self.layout = path, layout
        reader = Reader(str(path))
        names = reader.field_names
        self.ptr = {name: reader.metadata[f"f{i}"] for i, name in enumerate(names)}
        self.size = {name: int(np.prod(f.shape)) * f.dtype.itemsize for name, f in reader.handlers.items()}
        self.map = np.memmap(path, np.uint8, "r")

    def _field(self, name: str, sample: int) -> np.ndarray:
        at = int(self.ptr[name][sample])
        return np.array(self.map[at:at + self.size[name]])          # a copy: the map stays read-only

    def record(self, sample: int, key: str, view: int) -> tuple[np.ndarray, np.ndarray | None]:
        where = f"{self.path} sample {sample}"
        if not 0 <= sample < len(self.ptr["meta"]):
            raise DataError(f"{where}: beyond the file's {len(self.ptr['meta'])} samples")
        meta = self._field("meta", sample).view(np.int64)
        t, c, _, _ = self.layout.shape
        values = self._field("values", sample).view(np.uint8 if self.layout.dtype == "uint8" else np.float16)
        values = values.reshape(self.layout.shape)
        scales = self._field("scales", sample).view(np.float16).reshape(t, c) if "scales" in self.ptr else None
        if int(np.int64(meta[0]).view(np.uint64)) != key_hash(key) or int(meta[1]) != view:
            raise DataError(f"{where}: holds another clip or view than key {key} view {view}")
        if int(meta[2]) != _check(values, scales):
            raise DataError(f"{where}: record of key {key} view {view} is damaged (checksum mismatch)")
        return values, scales


def export(cache, out: Path) -> Path:
    """A complete default-storage cache as an FFCV cache in `out` (same identity, parts and records)."""
    from train.teacher_cache import CACHE_JSON, PARTS, read_json_file

    _require_ffcv()
    cache.require_complete()
    (out / PARTS).mkdir(parents=True, exist_ok=True)
    for part in cache.parts:
        done = out / PARTS / f"{part.name}.json"
        if done.is_file():
            continue
        keys = read_json_file(cache.root / PARTS / f"{part.name}.json", "")["keys"]
        entry = write_part(out / PARTS / f"{part.name}{SUFFIX}", cache, part.name, keys)
        atomic_write(done, json.dumps(entry, indent=0))
    atomic_write(out / CACHE_JSON, json.dumps({**cache.meta, "storage": "ffcv"}, indent=1))
    return out
