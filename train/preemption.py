"""SLURM pre-emption: a signal on any rank -> every rank stops at the same step -> checkpoint -> exit 75.

The handler only records the signal; the training loop asks `agreed()` once per optimiser step, an
all-reduce (max) over ranks, so that all ranks checkpoint the same step even when only one was signalled.
The all-reduce runs over a CPU (gloo) group: 8 bytes between hosts per step, never a wait for the GPU.
launch/slurm/train.sbatch requeues the job on exit status 75 or when <out_dir>/PREEMPTED exists.
"""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist

from pipeline.atomic import atomic_write
from pipeline.cli import EXIT_PREEMPTED

MARKER = "PREEMPTED"
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionWatch:
    """Installs SIGTERM/SIGUSR1 handlers for its lifetime (a context manager)."""

    def __init__(self, signals=SIGNALS):
        self.signals = tuple(signals)
        self.received: int = 0
        self._previous: dict = {}
        self._distributed = False
        self._group = None

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __enter__(self) -> "PreemptionWatch":
        """Every rank enters together (creating the gloo group is a collective call)."""
        self._distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if self._distributed and dist.get_backend() != "gloo":
            self._group = dist.new_group(backend="gloo")
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def agreed(self) -> str | None:
        """The signal's name if any rank has received one, the same answer on every rank."""
        code = self.received
        if self._distributed:
            flag = torch.tensor([code], dtype=torch.int64)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
            code = int(flag.item())
        return signal.Signals(code).name if code else None


def write_marker(out_dir: str | Path, *, step: int, epoch: int, signal_name: str, checkpoint: Path) -> Path:
    path = Path(out_dir) / MARKER
    atomic_write(path, json.dumps({"step": step, "epoch": epoch, "signal": signal_name,
                                   "checkpoint": str(checkpoint), "time": time.time()}) + "\n")
    return path


def clear_marker(out_dir: str | Path) -> None:
    """A resumed (requeued) run removes the marker of the pre-emption it recovers from."""
    (Path(out_dir) / MARKER).unlink(missing_ok=True)
