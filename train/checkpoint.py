"""Checkpoints that are either complete or invisible, checked before use, rotated by us, resumed exactly.

accelerate's `save_state` writes model, optimiser and every rank's RNG states (DeepSpeed: its ZeRO shards
from every rank). Around it: each rank's loader position (JSON), the trainer's counters, and a completion
marker, all written into `checkpoints/.tmp-<name>` and renamed to `checkpoints/<name>` only when every
rank has finished. The marker, `COMPLETE`, records the size and sha256 of every file, so a damaged
checkpoint is found before it is loaded; pickled files are read as data only (train/unpickle.py).
accelerate's own rotation and counter are not used: its `load_state` does not restore the counter (so
rotation misnames after a resume) and it would resume a half-written folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator

from pipeline.atomic import atomic_write, disk_full_error, free_bytes, is_disk_full
from pipeline.errors import DataError, ResourceError, W3Error
from train.distributed import agree, everyone
from train.unpickle import PICKLE_SUFFIXES, data_only, numpy_globals, refused_globals

MARKER = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
STEP_DIR = re.compile(r"^step-(\d{8})$")
BEST = "best"
RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")


def checkpoints_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def is_complete(ckpt: Path) -> bool:
    """Finished writing (it may still be damaged since: see `problems`)."""
    return (ckpt / MARKER).is_file() and (ckpt / TRAINER_STATE).is_file()


def loader_file(ckpt: Path, rank: int) -> Path:
    return ckpt / f"loader_rank{rank:05d}.json"


def rng_file(ckpt: Path, rank: int) -> Path:
    return ckpt / f"random_states_{rank}.pkl"


# ------------------------------------------------------------------------------------------- writing


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _digest(path: Path) -> dict:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            sha.update(block)
    return {"bytes": path.stat().st_size, "sha256": sha.hexdigest()}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _space_needed(out_dir: Path) -> int:
    """The size of the newest complete checkpoint: what the next one will take (0 before the first)."""
    done = complete_step_checkpoints(out_dir)
    return folder_bytes(done[-1]) if done else 0


def save_checkpoint(accelerator: Accelerator, out_dir: str | Path, name: str, trainer_state: dict,
                    loader, estimate: int = 0) -> Path:
    """Every rank calls this; returns the final folder, which exists only once the checkpoint is whole.
    A full disk is a ResourceError on every rank naming the folder and the bytes needed (the size of the
    previous checkpoint, else `estimate`)."""
    root = checkpoints_root(out_dir)
    final, tmp = root / name, root / f".tmp-{name}"
    needed = _make_room(accelerator, Path(out_dir), tmp)
    error = _write_state(accelerator, tmp, name, loader, needed or estimate)
    try:
        agree(accelerator, error)
    except ResourceError:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)      # give the space back to whatever else writes there
        raise
    names = sorted(set().union(*everyone(accelerator, [_files(tmp)])))   # each rank sees its own files
    if accelerator.is_main_process:
        state = dict(trainer_state, world_size=accelerator.num_processes, saved_at=time.time())
        _seal(tmp, final, state, names)
    accelerator.wait_for_everyone()
    return final


def _make_room(accelerator: Accelerator, out_dir: Path, tmp: Path) -> int:
    """Main process: an empty `tmp`, once the previous checkpoint's size is free; returns that size."""
    needed, error = 0, None
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        needed = _space_needed(out_dir)
        if free_bytes(tmp.parent) < needed:
            error = disk_full_error(tmp, needed, "a checkpoint")
        else:
            tmp.mkdir(parents=True)
    agree(accelerator, error)
    return needed


def _write_state(accelerator: Accelerator, tmp: Path, name: str, loader, needed: int) -> ResourceError | None:
    """accelerate's state and this rank's loader position; a full disk is returned, to be agreed on."""
    try:
        accelerator.save_state(str(tmp))
        atomic_write(loader_file(tmp, accelerator.process_index), json.dumps(loader.state_dict()))
    except Exception as err:       # torch, safetensors and DeepSpeed each report a full disk their own way
        if not is_disk_full(err, tmp):
            raise
        return ResourceError(f"{tmp}: disk full writing checkpoint {name} ({type(err).__name__}: {err}); it "
                             f"needs about {needed:,} bytes, {free_bytes(tmp):,} free there; free some space "
                             f"or set out_dir elsewhere")
    return None


def _seal(tmp: Path, final: Path, state: dict, names: list[str]) -> None:
    """Main process: the trainer state, then COMPLETE with every file's checksum, then the rename."""
    atomic_write(tmp / TRAINER_STATE, json.dumps(state, indent=1))
    files = {n: _digest(tmp / n) for n in sorted({*names, TRAINER_STATE})}
    atomic_write(tmp / MARKER, json.dumps({"step": state["step"], "files": files}, indent=1))
    old = final.with_name(f".old-{final.name}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


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


# ------------------------------------------------------------------------------------------- checking


def _recorded(ckpt: Path) -> dict[str, dict]:
    """COMPLETE's file -> {bytes, sha256}; a DataError naming COMPLETE when it cannot say."""
    marker = ckpt / MARKER
    try:
        files = json.loads(marker.read_text()).get("files")
    except (ValueError, UnicodeDecodeError, AttributeError) as err:
        raise DataError(f"{marker}: not a valid completion record ({err})") from None
    if not isinstance(files, dict):
        raise DataError(f"{marker}: lists no checksums (written by a version of train/checkpoint.py before "
                        f"checksums); it cannot be checked, so it is not used")
    bad = [name for name, want in files.items() if not (isinstance(want, dict) and isinstance(want.get("bytes"), int)
                                                         and isinstance(want.get("sha256"), str))]
    if bad:
        raise DataError(f"{marker}: not a valid completion record (no size and sha256 for {bad[0]})")
    return files


def problems(ckpt: Path) -> list[str]:
    """What is wrong with a complete checkpoint, one line per file ('<path>: <what>'); [] when it is whole:
    every file recorded in COMPLETE present with its size and sha256, no other file, every pickle data only."""
    try:
        recorded = _recorded(ckpt)
    except DataError as err:
        return [str(err)]
    found = []
    for name, want in recorded.items():
        path = ckpt / name
        if not path.is_file():
            found.append(f"{path}: missing")
        elif path.stat().st_size != want["bytes"]:
            found.append(f"{path}: {path.stat().st_size:,} bytes, {want['bytes']:,} when written (truncated or "
                         f"overwritten)")
        elif _digest(path)["sha256"] != want["sha256"]:
            found.append(f"{path}: contents changed since it was written (sha256 differs)")
    found += [f"{ckpt / n}: not written by the trainer" for n in _files(ckpt) if n not in recorded and n != MARKER]
    return found or _pickle_problems(ckpt, [n for n in recorded if n.endswith(PICKLE_SUFFIXES)])


def _pickle_problems(ckpt: Path, names: list[str]) -> list[str]:
    """Pickles that refer to anything but data, read without unpickling them."""
    found = []
    for name in names:
        try:
            refused = refused_globals(ckpt / name)
        except ValueError as err:
            found.append(f"{ckpt / name}: {err}")
            continue
        if refused:
            found.append(f"{ckpt / name}: refers to {', '.join(refused)}, which is not data; refusing to unpickle it")
    return found


def check(ckpt: Path) -> None:
    """A DataError naming every damaged file of `ckpt`."""
    found = problems(ckpt)
    if found:
        raise DataError(f"checkpoint {ckpt} is damaged:\n  " + "\n  ".join(found))


# ------------------------------------------------------------------------------------------- choosing


def run_checkpoint(run_dir: str | Path, *, prefer_best: bool) -> Path | None:
    """A run folder's best checkpoint (if preferred and complete), else its newest complete step one."""
    candidates = _run_candidates(run_dir, prefer_best)
    return candidates[0] if candidates else None


def _run_candidates(run_dir: str | Path, prefer_best: bool) -> list[Path]:
    best = checkpoints_root(run_dir) / BEST
    if prefer_best and is_complete(best):
        return [best]
    return complete_step_checkpoints(run_dir)[::-1]


def resume_candidates(resume: str | None, out_dir: str | Path) -> tuple[list[Path], bool]:
    """The checkpoints `--resume` may use, preferred first, and whether a damaged one gives way to the next:
    `auto` (or a run folder) -> its complete step checkpoints, newest first, falling back; `best` -> its best
    checkpoint if complete (no fallback), else as auto; a checkpoint folder -> that one (no fallback)."""
    if resume is None:
        return [], False
    if resume in ("auto", "best"):
        found = _run_candidates(out_dir, prefer_best=resume == "best")
        return found, not (found and found[0].name == BEST)
    path = Path(resume)
    if is_complete(path):
        return [path], False
    found = _run_candidates(path, prefer_best=False)
    if found:
        return found, True
    if path.is_dir() and any(path.iterdir()) and not (path / "checkpoints").exists():
        raise ResourceError(f"--resume {path}: checkpoint has no {MARKER} marker (it was not finished "
                            f"writing); resume from an older one or with --resume auto")
    raise ResourceError(f"--resume {path}: not a complete checkpoint nor a run folder with one "
                        f"(expected {path}/{MARKER} or {path}/checkpoints/step-*/{MARKER})")


def resolve_resume(resume: str | None, out_dir: str | Path, say: Callable[[str], None] = print) -> Path | None:
    """The checkpoint to resume from, checked (None: start afresh). A damaged one is a DataError naming its
    files, or, where falling back is allowed, skipped with a message through `say`."""
    candidates, fallback = resume_candidates(resume, out_dir)
    damaged = []
    for ckpt in candidates:
        found = problems(ckpt)
        if not found:
            if damaged:
                say(f"resuming from {ckpt}, the newest undamaged checkpoint")
            return ckpt
        damaged.append(f"{ckpt}:\n    " + "\n    ".join(found))
        if not fallback:
            break
        say(f"checkpoint {ckpt} is damaged, falling back to the previous complete one: {found[0]}")
    if damaged:
        raise DataError("no undamaged checkpoint to resume from:\n  " + "\n  ".join(damaged))
    return None


# ------------------------------------------------------------------------------------------- loading


def read_trainer_state(ckpt: Path) -> dict:
    path = ckpt / TRAINER_STATE
    try:
        state = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise DataError(f"{path}: not a trainer state (no 'step')")
    return state


def _read_rng(path: Path) -> dict:
    """A rank's RNG states as accelerate wrote them; accelerate itself would skip an unreadable file with
    only a log line, and the resume would silently stop being exact."""
    from accelerate.utils import load
    try:
        with data_only():
            states = load(path)
    except Exception as err:
        raise DataError(f"{path}: RNG states unreadable ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); the resume would not be exact") from None
    missing = [k for k in RNG_KEYS if not isinstance(states, dict) or k not in states]
    if missing:
        raise DataError(f"{path}: RNG states lack {', '.join(missing)}; the resume would not be exact")
    return states


def load_checkpoint(accelerator: Accelerator, ckpt: Path, loader) -> dict:
    """Restore model, optimiser, RNG (accelerate) and this rank's loader position from a checked checkpoint.
    A rank's failure is raised on every rank at the next agreement, so no rank waits for a stopped one."""
    state = read_trainer_state(ckpt)
    if state["world_size"] != accelerator.num_processes:
        raise ResourceError(
            f"{ckpt} was written by {state['world_size']} processes, this run has "
            f"{accelerator.num_processes}: resume with the same number (ZeRO shards and the loader's "
            f"per-rank positions are tied to it)")
    rank = accelerator.process_index
    rng, error = None, None
    try:
        rng = _read_rng(rng_file(ckpt, rank))
    except DataError as err:
        error = err
    agree(accelerator, error)
    agree(accelerator, _load_state(accelerator, ckpt))
    error = None
    try:
        if not torch.equal(torch.get_rng_state(), rng["torch_manual_seed"]):
            raise DataError(f"{rng_file(ckpt, rank)}: accelerate did not restore these RNG states")
        if loader is not None:          # None: an evaluation, which reads no training split
            _load_loader_state(loader, loader_file(ckpt, rank))
    except W3Error as err:
        error = err
    agree(accelerator, error)
    return state


def _load_state(accelerator: Accelerator, ckpt: Path) -> W3Error | None:
    """accelerate's load_state with every pickle read as data; a failure returned as a DataError."""
    try:
        with data_only(), torch.serialization.safe_globals(numpy_globals()):
            accelerator.load_state(str(ckpt))
    except W3Error as err:
        return err
    except Exception as err:
        text = " ".join(str(err).split())
        failed = DataError(f"{ckpt}: cannot be loaded into this run ({type(err).__name__}: {text[:300]}"
                           f"{'...' if len(text) > 300 else ''}); other model settings than the ones in its "
                           f"{TRAINER_STATE}?")
        failed.__cause__ = err          # the library's traceback, for whoever debugs it from Python
        return failed
    return None


def _load_loader_state(loader, path: Path) -> None:
    try:
        loader.load_state_dict(json.loads(path.read_text()))
    except W3Error:
        raise
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a loader state ({type(err).__name__}: {err})") from None
