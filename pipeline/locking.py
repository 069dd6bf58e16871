"""One writer per output folder: a lock that the shard tool takes on `<out>/<dataset>` and the trainer (its
main process only) on `out_dir`, so that a second run into the same folder is refused, naming the holder.

The lock is an exclusive `flock` on `<folder>/.lock`, which also holds a record of the holder (host, pid,
start time, command, SLURM job). The kernel drops the lock when its process dies, however it dies, so the
lock of a killed run is simply taken over, with a note naming it; no guess about stale pids is needed.
One case remains: a SLURM job requeued onto another node after its first node died, while the network
filesystem still counts the dead node's lock as held. A lock held by an earlier run of the same SLURM job
(same job id, lower restart count) is therefore taken over too: SLURM starts a requeued job only after
its previous run has ended.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from pipeline.errors import ResourceError

LOCK_NAME = ".lock"
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _slurm() -> dict | None:
    job = os.environ.get("SLURM_JOB_ID")
    return {"job_id": job, "restart": int(os.environ.get("SLURM_RESTART_COUNT") or 0)} if job else None


def holder_record() -> dict:
    """What a refused run is told about the holder."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": " ".join(sys.argv),
            "slurm": _slurm()}


def describe(record: dict) -> str:
    if not record:
        return "a run that has not written its record yet"
    slurm = record.get("slurm")
    job = f", SLURM job {slurm['job_id']} (restart {slurm['restart']})" if slurm else ""
    return (f"host {record.get('host')}, pid {record.get('pid')}, started {record.get('started')}{job}, "
            f"command: {record.get('command')}")


def _earlier_run_of_this_job(record: dict) -> bool:
    ours, theirs = _slurm(), record.get("slurm")
    return bool(ours and theirs and theirs.get("job_id") == ours["job_id"]
                and int(theirs.get("restart", 0)) < ours["restart"])


class FolderLock:
    """`with FolderLock(folder, what="--out"):` holds the folder's lock; `what` names the setting the user
    chose the folder with, for the refusal message."""

    def __init__(self, folder: str | os.PathLike, what: str = "folder"):
        self.path = Path(folder) / LOCK_NAME
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):               # retried only when the file was replaced between open and lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if self._try_lock(fd) and self._still_the_file(fd):
                    self._take(fd)
                    return self
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise ResourceError(f"{self.path}: could not take the lock (the file keeps being replaced)")

    def _try_lock(self, fd: int) -> bool:
        """True once locked; raises ResourceError naming the holder when another live run has it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        except OSError as err:
            if err.errno not in _UNSUPPORTED:
                raise
            print(f"warning: {self.path}: this filesystem does not support locks ({err.strerror}); "
                  f"nothing stops a second run from writing into {self.path.parent}", file=sys.stderr)
            return True
        record = _read(fd)
        if _earlier_run_of_this_job(record):
            print(f"taking over {self.path} from an earlier run of this SLURM job ({describe(record)})",
                  file=sys.stderr)
            self.path.unlink(missing_ok=True)        # a fresh file carries a fresh lock; retried by acquire
            return False
        raise ResourceError(f"{self.path.parent} ({self.what}) is in use by another run: {describe(record)}. "
                            f"Wait for it to finish or choose another {self.what}; if that process is gone "
                            f"(its node died), delete {self.path}")

    def _still_the_file(self, fd: int) -> bool:
        """False when the path was unlinked or replaced while we waited (then the lock guards nothing)."""
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _take(self, fd: int) -> None:
        previous = _read(fd)
        if previous.get("pid") is not None:
            print(f"note: taking over {self.path}, left by a run that is no longer running "
                  f"({describe(previous)})", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder_record()) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Removes the file while still holding the lock (a waiter then sees a replaced file and retries)."""
        if self._fd is None:
            return
        try:
            if self._still_the_file(self._fd):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict:
    """The holder's record; {} for an empty or unreadable one (a holder killed while writing it)."""
    try:
        data = os.pread(fd, 1 << 16, 0)
        record = json.loads(data.decode()) if data.strip() else {}
        return record if isinstance(record, dict) else {}
    except (ValueError, UnicodeDecodeError):
        return {}
