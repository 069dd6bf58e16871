"""Reading checkpoint files never runs code: every pickle is read by torch's weights-only unpickler.

We do not call `torch.load` with `weights_only off` ourselves, but the libraries we call do: accelerate
for objects registered for checkpointing (`load_custom_state`), DeepSpeed for its checkpoint files (its
torch checkpoint engine) and its `zero_to_fp32`. Inside `data_only()` every `torch.load` in the process
is forced to weights-only (torch's `TORCH_FORCE_WEIGHTS_ONLY_LOAD`, read at each call), which rebuilds
tensors, containers and numbers and refuses any other global; the few plain classes DeepSpeed stores are
allowed by name (`ALLOWED`). `refused_globals` reads a file's pickle without running it, so a refusal
can name the file before anything is loaded.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

FORCE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
# Files in a checkpoint folder that torch.load reads (the rest are JSON, text or safetensors).
PICKLE_SUFFIXES = (".pt", ".bin", ".pkl", ".pth")
# Plain-data classes in DeepSpeed's optimizer state files (ZeRO 1-3, DeepSpeed 0.19), by module path.
ALLOWED = ("deepspeed.runtime.fp16.loss_scaler.LossScaler",
           "deepspeed.runtime.zero.config.ZeroStageEnum",
           "deepspeed.utils.tensor_fragment.fragment_address")


def _allowed_classes() -> list:
    """The classes of ALLOWED that can be imported (without DeepSpeed there are none to allow)."""
    import importlib
    if not torch.cuda.is_available():   # else DeepSpeed's accelerator probe warns on stdout (predict's output)
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    found = []
    for dotted in ALLOWED:
        module, name = dotted.rsplit(".", 1)
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return found


@contextmanager
def data_only() -> Iterator[None]:
    """Every torch.load inside the block is weights-only, whatever its caller asked for."""
    previous = os.environ.get(FORCE)
    os.environ[FORCE] = "1"
    try:
        with torch.serialization.safe_globals(_allowed_classes()):
            yield
    finally:
        if previous is None:
            os.environ.pop(FORCE, None)
        else:
            os.environ[FORCE] = previous


def numpy_globals() -> list:
    """What accelerate's RNG state files need besides torch's own allow-list (accelerate adds the same)."""
    from accelerate.utils.other import TORCH_SAFE_GLOBALS
    return list(TORCH_SAFE_GLOBALS)


def refused_globals(path: Path) -> list[str]:
    """The globals in a torch.save file that data_only() would refuse, read without unpickling; a file that
    is not a torch.save archive raises ValueError."""
    with data_only(), torch.serialization.safe_globals(numpy_globals()):
        try:
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except (RuntimeError, pickle.UnpicklingError, EOFError) as err:
            raise ValueError(f"not a readable torch.save archive ({err})") from None
