"""Files that are whole or absent: written under a temporary name in the same folder, flushed to disk,
then renamed over the final name. A reader (or a rerun after kill -9) never sees half a file.

A full disk is a ResourceError naming the file and the bytes it needed: `write()` reports ENOSPC without
a path, and libraries that write for us (torch, safetensors) raise their own exceptions for it.

Temporary names are ``.<name>.tmp<pid>``; tools that resume (pipeline/shard.py) delete leftovers of that
pattern before they start.
"""
from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from pipeline.errors import ResourceError, W3Error

# What torch and safetensors say when a write hits a full disk (neither sets errno).
_FULL_DISK_TEXT = ("No space left on device", "os error 28")


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (the rename is metadata of the folder)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def free_bytes(folder: Path) -> int:
    """Free bytes on the filesystem holding ``folder`` (or its nearest existing parent)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def disk_full_error(path: Path, needed: int, what: str = "", more_than: bool = False) -> ResourceError:
    free = free_bytes(path.parent)
    return ResourceError(f"{path}: disk full{' writing ' + what if what else ''}: needs "
                         f"{'more than ' if more_than else ''}{needed:,} bytes, {free:,} free on that "
                         f"filesystem; free some space or write elsewhere")


def is_disk_full(err: BaseException, folder: Path) -> bool:
    """Whether ``err`` (from our own write or a library's) came from a full disk."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if any(text in str(err) for text in _FULL_DISK_TEXT):
        return True
    return free_bytes(folder) < 1 << 20         # e.g. torch's "unexpected pos ..." once the disk filled up


def require_space(path: Path, needed: int, what: str = "") -> None:
    """Refuse up front when ``needed`` bytes will not fit where ``path`` goes."""
    if free_bytes(Path(path).parent) < needed:
        raise disk_full_error(Path(path), needed, what)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", size_hint: int = 0) -> Iterator[IO]:
    """``open`` for writing whose result appears at ``path`` only when the block ends without an error.
    ``size_hint``: the bytes the file will take, for the message when the disk is full."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except Exception as err:          # a library writing into ``fh`` (torch.save) may not raise OSError
        full = not isinstance(err, W3Error) and is_disk_full(err, path.parent)
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if full:
            raise disk_full_error(path, size_hint or written, more_than=not size_hint) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w", size_hint=len(data)) as fh:
        fh.write(data)
