"""Checkpoints that are either complete or invisible, rotated by us, resumed exactly.

accelerate's `save_state` writes model, optimiser, scheduler and every rank's RNG states (DeepSpeed: its
ZeRO shards from every rank). Around it: each rank's loader position, the trainer's counters, and a
completion marker, all written into `checkpoints/.tmp-<name>` and renamed to `checkpoints/<name>` only
when every rank has finished. accelerate's own rotation and counter are not used: its `load_state` does
not restore the counter (so rotation misnames after a resume) and it would resume a half-written folder.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from pipeline.atomic import atomic_write
from pipeline.errors import ResourceError

MARKER = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
STEP_DIR = re.compile(r"^step-(\d{8})$")
BEST = "best"


def checkpoints_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def is_complete(ckpt: Path) -> bool:
    return (ckpt / MARKER).is_file() and (ckpt / TRAINER_STATE).is_file()


def _loader_file(ckpt: Path, rank: int) -> Path:
    return ckpt / f"loader_rank{rank:05d}.pt"


def save_checkpoint(accelerator: Accelerator, out_dir: str | Path, name: str, trainer_state: dict,
                    loader) -> Path:
    """Every rank calls this; returns the final folder, which exists only once the checkpoint is whole."""
    root = checkpoints_root(out_dir)
    final, tmp = root / name, root / f".tmp-{name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    torch.save(loader.state_dict(), _loader_file(tmp, accelerator.process_index))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state = dict(trainer_state, world_size=accelerator.num_processes, saved_at=time.time())
        atomic_write(tmp / TRAINER_STATE, json.dumps(state, indent=1))
        atomic_write(tmp / MARKER, json.dumps({"step": state["step"], "files": sorted(
            p.name for p in tmp.iterdir())}))
        old = root / f".old-{name}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def complete_step_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete `step-*` folders, oldest first."""
    root = checkpoints_root(out_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and is_complete(p)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def rotate(out_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` complete step checkpoints."""
    for old in complete_step_checkpoints(out_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)


def clean_temporaries(out_dir: str | Path) -> None:
    """Half-written `.tmp-*` and replaced `.old-*` folders of a killed run (main process, before training)."""
    root = checkpoints_root(out_dir)
    for stale in [*root.glob(".tmp-*"), *root.glob(".old-*")] if root.is_dir() else []:
        shutil.rmtree(stale, ignore_errors=True)


def run_checkpoint(run_dir: str | Path, *, prefer_best: bool) -> Path | None:
    """A run folder's best checkpoint (if preferred and complete), else its newest complete step one."""
    best = checkpoints_root(run_dir) / BEST
    if prefer_best and is_complete(best):
        return best
    ckpts = complete_step_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def resolve_resume(resume: str | None, out_dir: str | Path) -> Path | None:
    """`auto` -> newest complete step checkpoint of out_dir (None if there is none); `best` -> its best
    checkpoint, else as auto; a path -> that checkpoint, or the newest complete one of that run folder."""
    if resume is None:
        return None
    if resume in ("auto", "best"):
        return run_checkpoint(out_dir, prefer_best=resume == "best")
    path = Path(resume)
    if is_complete(path):
        return path
    found = run_checkpoint(path, prefer_best=False)
    if found is not None:
        return found
    if path.is_dir() and any(path.iterdir()) and not (path / "checkpoints").exists():
        raise ResourceError(f"--resume {path}: checkpoint has no {MARKER} marker (it was not finished "
                            f"writing); resume from an older one or with --resume auto")
    raise ResourceError(f"--resume {path}: not a complete checkpoint nor a run folder with one "
                        f"(expected {path}/{MARKER} or {path}/checkpoints/step-*/{MARKER})")


def read_trainer_state(ckpt: Path) -> dict:
    return json.loads((ckpt / TRAINER_STATE).read_text())


def load_checkpoint(accelerator: Accelerator, ckpt: Path, loader) -> dict:
    """Restore model, optimiser, scheduler, RNG (accelerate) and this rank's loader position."""
    state = read_trainer_state(ckpt)
    if state["world_size"] != accelerator.num_processes:
        raise ResourceError(
            f"{ckpt} was written by {state['world_size']} processes, this run has "
            f"{accelerator.num_processes}: resume with the same number (ZeRO shards and the loader's "
            f"per-rank positions are tied to it)")
    accelerator.load_state(str(ckpt))
    loader.load_state_dict(torch.load(_loader_file(ckpt, accelerator.process_index), weights_only=False))
    return state
