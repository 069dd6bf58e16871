"""The Accelerator for a run: one process, DDP or DeepSpeed ZeRO, chosen by `accelerate launch`.

The run config is the single source of the batch size, gradient clipping and precision; this module writes
them into DeepSpeed's config, around three traps described in docs/PLATFORM_NOTES.md: CPU DeepSpeed needs a gloo
process group, DeepSpeed's bf16 engine breaks BatchNorm (use its torch_autocast instead), and a loader
that is not a DataLoader leaves `train_micro_batch_size_per_gpu` unset.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, gather_object, parse_flag_from_env

from pipeline.errors import ConfigError, W3Error


def build_accelerator(cfg: dict) -> Accelerator:
    on_gpu = torch.cuda.is_available()
    deepspeed = parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    # CPU-only: DDP needs cpu=True (accelerate then uses MULTI_CPU/gloo); DeepSpeed needs cpu=False and an
    # explicit gloo process group, or accelerate sees one process and DeepSpeed's batch check fails.
    handlers = [InitProcessGroupKwargs(backend="gloo", timeout=timedelta(minutes=30))] \
        if launched and not on_gpu else []
    # Outside DeepSpeed, accelerate's autocast does bf16 (parameters and BN stay fp32); under DeepSpeed
    # accelerate's bf16 would switch on DeepSpeed's bf16 engine, so precision goes through torch_autocast.
    precision = "bf16" if cfg["train"]["precision"] == "bf16" and not deepspeed else "no"
    # accumulate() steps the optimiser only every train.grad_accum micro-batches when told so here
    # (DeepSpeed takes it from its own config, set below)
    accum = {} if deepspeed else {"gradient_accumulation_steps": cfg["train"]["grad_accum"]}
    accelerator = Accelerator(cpu=not on_gpu and not deepspeed, kwargs_handlers=handlers,
                              mixed_precision=precision, **accum)
    if uses_deepspeed(accelerator):
        _configure_deepspeed(accelerator, cfg)
    return accelerator


def _configure_deepspeed(accelerator: Accelerator, cfg: dict) -> None:
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ConfigError(f"DeepSpeed config: remove {key!r}; the run config sets the optimiser and the "
                              f"learning-rate schedule (optim.*)")
    if ds.get("fp16", {}).get("enabled") is True:
        raise ConfigError("DeepSpeed config: fp16 is not supported; precision comes from train.precision "
                          "(bf16 through DeepSpeed's torch_autocast)")
    train = cfg["train"]
    if train["compile"] != "none" and ds.get("zero_optimization", {}).get("stage") == 3:
        raise ConfigError(f"{cfg.label('train.compile')}: {train['compile']!r} is not supported with DeepSpeed ZeRO "
                          f"stage 3 (its parameters are gathered by module hooks around each layer, which a compiled "
                          f"model does not call as eager does); use ZeRO-2 or train.compile none")
    ds["train_micro_batch_size_per_gpu"] = train["batch_size"]
    ds["gradient_accumulation_steps"] = train["grad_accum"]
    ds["train_batch_size"] = train["batch_size"] * train["grad_accum"] * accelerator.num_processes
    # DeepSpeed ignores accelerator.clip_grad_norm_ and clips at 1.0 by default: set its own key.
    ds["gradient_clipping"] = float(cfg["optim"]["clip_grad"])
    ds["bf16"] = {"enabled": False}
    ds["torch_autocast"] = {"enabled": train["precision"] == "bf16", "dtype": "bfloat16"}
    accelerator.gradient_accumulation_steps = train["grad_accum"]


def uses_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


@torch.no_grad()
def average_bn_buffers(model: torch.nn.Module, accelerator: Accelerator) -> None:
    """Average BatchNorm running statistics over ranks (DeepSpeed never re-broadcasts buffers).

    DDP already keeps them equal (it broadcasts rank 0's buffers every forward), so this is only needed
    under DeepSpeed; called before evaluation and before every checkpoint so both see one model.
    """
    if accelerator.num_processes == 1 or not uses_deepspeed(accelerator):
        return
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for buf in (module.running_mean, module.running_var):
                if buf is not None:
                    torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
                    buf.div_(accelerator.num_processes)


def everyone(accelerator: Accelerator, mine: list) -> list:
    """The concatenation of every rank's list, on every rank (a collective call)."""
    return gather_object(mine) if accelerator.num_processes > 1 else list(mine)


def agree(accelerator: Accelerator, error: W3Error | None) -> None:
    """Raise any rank's `error` on every rank (a collective call), so that no rank waits for one that stopped."""
    errors = [e for e in everyone(accelerator, [error]) if e is not None]
    if errors:
        raise errors[0]
