"""torch.compile of a model, in place, so that its state_dict keys stay those of the eager model.

``nn.Module.compile`` compiles the module's call without wrapping it (``torch.compile(model)`` returns an
``OptimizedModule`` whose keys gain an ``_orig_mod.`` prefix): checkpoints, exports and the teacher cache keep
reading the same keys whichever mode trained them, and DDP or DeepSpeed wrap the module as usual. ``none``
is eager. Which mode pays is measured by ``benchmarks/model_step_time.py`` (docs/BENCHMARKS.md).
"""
from __future__ import annotations

from torch import nn

# torch.compile's modes, plus none (eager). reduce-overhead adds CUDA graphs (GPU only; on the CPU it is
# the default mode); max-autotune benchmarks kernel choices at compile time.
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_model(model: nn.Module, mode: str) -> nn.Module:
    """Compile ``model`` in place under ``mode`` (a :data:`COMPILE_MODES` value checked by its owner)."""
    if mode != "none":
        # static shapes: a batch of another size (evaluation, a last partial batch) is compiled again for its
        # size; dynamic shapes crash inductor on W3's masking (torch 2.13: "cannot determine truth value of
        # Relational") and gain nothing for a model whose shapes are fixed by the config
        model.compile(mode=mode, dynamic=False)
    return model
