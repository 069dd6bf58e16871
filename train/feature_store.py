"""Teacher features on disk as fixed-size records: one part file per data shard, record ``i * V + v`` holding
view ``v`` of the shard's ``i``-th clip. A record is found by arithmetic (no index to read or trust), read
with one ``pread``, and checked on every read by its own CRC-32 and the hash of its key.

Record (little-endian, padded to a multiple of 64 bytes; page alignment would cost 0.5 % and push an
R50 8x224 view past 0.80 MiB)::

    magic b"W3FR" | crc32 u32 (of everything after it) | key hash u64 | view u32 | reserved u32
    values   T*C*h*w   uint8 (``uint8``: y / scale, rounded) or float16 (``float16``)
    scales   T*C       float16, ``uint8`` only: max over (h, w) of y per (frame, channel) / 255

y is non-negative (post-ReLU trunk + ReLU refinement, paper Eq. 8), so 8 bits with a per-(frame, channel)
scale keep the relative RMS error well under 1 % (docs/BENCHMARKS.md) at half the bytes of float16.
"""
from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.errors import ConfigError, DataError

MAGIC = b"W3FR"
HEADER = struct.Struct("<4sIQII")
ALIGN = 64
DTYPES = ("uint8", "float16")
LEVELS = 255


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class RecordLayout:
    """The shape of one view's features ``(T, C, h, w)`` and how its values are stored."""

    shape: tuple[int, int, int, int]
    dtype: str = "uint8"

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"mfr.cache_dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")

    @property
    def values(self) -> int:
        t, c, h, w = self.shape
        return t * c * h * w

    @property
    def scales(self) -> int:
        return self.shape[0] * self.shape[1] if self.dtype == "uint8" else 0

    @property
    def payload_bytes(self) -> int:
        return self.values * (1 if self.dtype == "uint8" else 2) + 2 * self.scales

    @property
    def record_bytes(self) -> int:
        return -(-(HEADER.size + self.payload_bytes) // ALIGN) * ALIGN

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype, "record_bytes": self.record_bytes}


def quantize(features: torch.Tensor, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float (B, T, C, h, w) -> stored values (B, ...) and, for uint8, float16 scales (B, T, C). Computed
    where the features are (on a GPU: only the bytes to store cross to the host)."""
    y = features.detach().float()
    if dtype == "float16":
        return y.to(torch.float16).cpu().numpy(), None
    low = float(y.min()) if y.numel() else 0.0
    if low < 0:
        raise DataError(f"teacher features have negative values (min {low:.3g}); 8-bit storage needs y >= 0 "
                        f"(set mfr.cache_dtype=float16)")
    scale = (y.amax(dim=(-2, -1)) / LEVELS).to(torch.float16)          # (B, T, C)
    divisor = scale.float()[..., None, None]
    q = torch.where(divisor > 0, y / divisor.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    return q.round_().clamp_(0, LEVELS).to(torch.uint8).cpu().numpy(), scale.cpu().numpy()


def dequantize(values: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
    """Stored values (and scales) -> float32 features; runs where the tensors are (CPU or GPU)."""
    if scales is None:
        return values.float()
    return values.float() * scales.float()[..., None, None]


def encode_record(key: str, view: int, values: np.ndarray, scales: np.ndarray | None,
                  layout: RecordLayout) -> bytes:
    payload = values.tobytes() + (scales.tobytes() if scales is not None else b"")
    if len(payload) != layout.payload_bytes:
        raise DataError(f"features of {key} view {view}: {len(payload)} bytes, the cache's layout "
                        f"{layout.shape} {layout.dtype} needs {layout.payload_bytes}")
    body = struct.pack("<QII", key_hash(key), view, 0) + payload
    record = MAGIC + struct.pack("<I", zlib.crc32(body)) + body
    return record + bytes(layout.record_bytes - len(record))


def decode_record(record: bytes | bytearray, key: str, view: int, layout: RecordLayout, where: str
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """(values, scales) of a record after checking its magic, checksum, key and view; DataError naming
    ``where`` (part file and record) otherwise."""
    if len(record) != layout.record_bytes:
        raise DataError(f"{where}: record of key {key} view {view} is cut ({len(record)} of "
                        f"{layout.record_bytes} bytes)")
    magic, crc, khash, rview, _ = HEADER.unpack_from(record)
    end = HEADER.size + layout.payload_bytes
    if magic != MAGIC or zlib.crc32(record[8:end]) != crc:
        raise DataError(f"{where}: record of key {key} view {view} is damaged (checksum mismatch); rebuild "
                        f"that part with `python train/teacher_cache.py build` after deleting it")
    if khash != key_hash(key) or rview != view:
        raise DataError(f"{where}: record holds another clip or view than key {key} view {view}; the part "
                        f"does not match its key list")
    buf = memoryview(record)[HEADER.size:end]
    t, c, _, _ = layout.shape
    if layout.dtype == "float16":
        return np.frombuffer(buf, np.float16).reshape(layout.shape), None
    values = np.frombuffer(buf[:layout.values], np.uint8).reshape(layout.shape)
    return values, np.frombuffer(buf[layout.values:], np.float16).reshape(t, c)
