"""Stage-1 training: DALI loader -> TSM(+W3) -> SGD, with evaluation, checkpoints and pre-emption.

One function, `fit`, for one process, DDP and DeepSpeed alike; the differences live in
train/distributed.py. A step is one optimiser step (`train.grad_accum` micro-batches); an epoch is
`len(loader) // grad_accum` steps, so every rank takes the same number of steps.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm

from pipeline.loader import build_loader
from train import checkpoint as ckpt_io
from train.config import dump_config, global_batch, model_config, scaled_lr, shards_dir
from train.distributed import average_bn_buffers, build_accelerator, uses_deepspeed
from train.evaluate import (aggregate_views, collect_scores, metric_names, score_clips, write_epic_submission,
                            write_predictions)
from train.optim import build_optimizer, build_scheduler
from pipeline.cli import EXIT_PREEMPTED
from train.preemption import PreemptionWatch, clear_marker, write_marker
from train.run_log import RunLog, plot_curves
from pipeline.errors import ConfigError, ResourceError
from w3model import VideoNet
from w3model.pretrained import scratch_warning


def loader_device(accelerator: Accelerator) -> str:
    return str(accelerator.device) if accelerator.device.type == "cuda" else "cpu"


def make_loader(cfg, accelerator: Accelerator, role: str):
    """The loader of `role` (train | eval) with the settings checked when the config was loaded."""
    return build_loader(shards_dir(cfg), cfg.loaders[role], rank=accelerator.process_index,
                        world_size=accelerator.num_processes, device=loader_device(accelerator))


def classification_loss(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over heads of cross-entropy (EPIC: verb + noun); label -1 = none."""
    return sum(F.cross_entropy(out.float(), labels[head].to(out.device), ignore_index=-1)
               for head, out in logits.items())


def stage1_loss(out: dict, labels: dict[str, torch.Tensor], afr_loss_weight: float) -> torch.Tensor:
    """Cross-entropy on the refined features y, plus the stage-1 "AFR loss" (model.afr_loss_weight times
    the same heads' cross-entropy on the unrefined x; w3model.ModelConfig) when the model computes it."""
    loss = classification_loss(out["logits"], labels)
    if "unrefined_logits" in out:
        loss = loss + afr_loss_weight * classification_loss(out["unrefined_logits"], labels)
    return loss


class Evaluator:
    """Runs eval.split with eval.mode's protocol and writes the per-clip predictions (EPIC: and the submission)."""

    def __init__(self, cfg: dict, accelerator: Accelerator, heads: dict[str, int], out_dir: Path):
        self.cfg, self.accelerator, self.heads, self.out_dir = cfg, accelerator, heads, out_dir
        self._loader = None
        self.is_epic = set(heads) >= {"verb", "noun"}
        if cfg["eval"]["epic_submission"] and not self.is_epic:
            raise ConfigError(f"{cfg.label('eval.epic_submission')}: the shards' heads are {sorted(heads)}, not EPIC's "
                              f"verb + noun")

    @property
    def loader(self):
        if self._loader is None:        # built on first use: a run that never evaluates needs no val split
            self._loader = make_loader(self.cfg, self.accelerator, "eval")
        return self._loader

    def __call__(self, model, step: int, epoch: int) -> dict[str, float]:
        average_bn_buffers(model, self.accelerator)
        clips = aggregate_views(collect_scores(model, self.loader, self.accelerator))
        metrics = score_clips(clips, self.heads)
        if self.accelerator.is_main_process:
            ev = self.cfg["eval"]
            name = f"{ev['split']}{'_multiview' if ev['mode'] == 'test' else ''}_step{step:08d}"
            pred_dir = self.out_dir / "predictions"
            write_predictions(clips, pred_dir / f"{name}.jsonl")
            if ev["epic_submission"]:
                write_epic_submission(clips, pred_dir / f"{name}_epic_submission.json")
        return metrics


def fit(cfg: dict, resume: str | None = None, eval_only: bool = False) -> int:
    """Train per `cfg`; returns the process exit status (0, or EXIT_PREEMPTED after a pre-emption).
    `eval_only`: evaluate the `resume` checkpoint (eval.split with eval.mode's protocol) and stop."""
    accelerator = build_accelerator(cfg)
    set_seed(cfg["seed"])
    out_dir = Path(cfg["out_dir"])
    main = accelerator.is_main_process
    train_cfg = cfg["train"]

    loader = make_loader(cfg, accelerator, "train")
    heads = dict(loader.heads)
    steps_per_epoch = len(loader) // train_cfg["grad_accum"]
    if steps_per_epoch == 0:
        raise ConfigError(f"{cfg.label('train.grad_accum')}: {len(loader)} batches per epoch per rank (at "
                          f"train.batch_size {train_cfg['batch_size']}) is fewer than train.grad_accum="
                          f"{train_cfg['grad_accum']}")
    evaluator = Evaluator(cfg, accelerator, heads, out_dir)
    if cfg["eval"]["best_metric"] not in metric_names(heads):
        raise ConfigError(f"{cfg.label('eval.best_metric')}: {cfg['eval']['best_metric']!r} is not one of "
                          f"{', '.join(metric_names(heads))} (the metrics of the shards' heads {sorted(heads)})")

    model_cfg = model_config(cfg, heads)
    if (warning := scratch_warning(model_cfg.pretrained, "model.pretrained" in cfg.origins)) and not eval_only:
        accelerator.print(f"warning: {warning}")
    model = VideoNet(model_cfg)
    lr = scaled_lr(cfg, accelerator.num_processes)
    optimizer = build_optimizer(model, cfg, lr)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    model, optimizer = accelerator.prepare(model, optimizer)
    # not prepared: accelerate would step it once per process; saved and restored with the state
    accelerator.register_for_checkpointing(scheduler)
    if main and uses_deepspeed(accelerator):
        out_dir.mkdir(parents=True, exist_ok=True)      # the effective DeepSpeed config, for the record
        (out_dir / "deepspeed_config.json").write_text(
            json.dumps(accelerator.state.deepspeed_plugin.deepspeed_config, indent=1, default=str))

    total_steps = train_cfg["epochs"] * steps_per_epoch
    if train_cfg["max_steps"]:
        total_steps = min(total_steps, train_cfg["max_steps"])
    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "best": None,
             "config": cfg, "model": model_cfg.to_dict(), "heads": heads}
    if main and not eval_only:
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt_io.clean_temporaries(out_dir)
        dump_config(cfg, out_dir / "config.yaml")
    accelerator.wait_for_everyone()
    resume_from = ckpt_io.resolve_resume(resume, out_dir)
    if eval_only and resume_from is None:
        raise ResourceError(f"--eval-only: no complete checkpoint in {ckpt_io.checkpoints_root(out_dir)} "
                            f"(train first, or pass --resume DIR)")
    if resume_from is not None:
        saved = ckpt_io.load_checkpoint(accelerator, resume_from, loader)
        state.update({k: saved[k] for k in ("step", "epoch", "batches_in_epoch", "best")})
        if eval_only:
            metrics = evaluator(model, state["step"], state["epoch"])
            accelerator.print(f"{resume_from} on {cfg['eval']['split']} ({cfg['eval']['mode']} protocol): "
                              + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
            accelerator.end_training()
            return 0
        if main:
            clear_marker(out_dir)
            accelerator.print(f"resumed from {resume_from} at step {state['step']} (epoch {state['epoch']})")
    log = RunLog(out_dir, enabled=main, resume_step=state["step"] if resume_from is not None else None)
    accelerator.print(
        f"{accelerator.distributed_type} x{accelerator.num_processes}: {cfg['model']['arch']}-R"
        f"{cfg['model']['depth']} heads {heads}, global batch {global_batch(cfg, accelerator.num_processes)}, "
        f"lr {lr:g}, {steps_per_epoch} steps/epoch, {total_steps} steps, out_dir {out_dir}")

    def save(name: str) -> Path:
        started = time.perf_counter()
        average_bn_buffers(model, accelerator)
        path = ckpt_io.save_checkpoint(accelerator, out_dir, name, state, loader)
        if main and name != ckpt_io.BEST:
            ckpt_io.rotate(out_dir, train_cfg["keep_checkpoints"])
        window["start"] += time.perf_counter() - started     # clips/s counts training time only
        return path

    def evaluate() -> None:
        started = time.perf_counter()
        metrics = evaluator(model, state["step"], state["epoch"])
        log.evaluation(step=state["step"], epoch=state["epoch"], split=cfg["eval"]["split"], metrics=metrics)
        accelerator.print(f"eval step {state['step']}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        window["start"] += time.perf_counter() - started
        value = metrics.get(cfg["eval"]["best_metric"])
        best = state["best"]
        if value is not None and (best is None or value > best["value"]):
            state["best"] = {"metric": cfg["eval"]["best_metric"], "value": value, "step": state["step"]}
            save(ckpt_io.BEST)

    bar = tqdm(total=total_steps, initial=state["step"], disable=not (main and train_cfg["progress"]),
               dynamic_ncols=True, desc="train")
    model.train()
    last_saved = state["step"] if resume_from is not None else -1
    # the loss stays on the device until a log step: no per-step host <-> device sync
    window = {"loss": torch.zeros((), dtype=torch.float64, device=accelerator.device), "steps": 0,
              "wait": 0.0, "start": time.perf_counter()}
    clips_per_step = global_batch(cfg, accelerator.num_processes)
    status = 0
    with PreemptionWatch() as watch:
        while state["step"] < total_steps:
            if state["batches_in_epoch"] == 0:
                loader.set_epoch(state["epoch"])
            batches = steps_per_epoch * train_cfg["grad_accum"]
            iterator = iter(loader)
            while state["batches_in_epoch"] < batches and state["step"] < total_steps:
                t0 = time.perf_counter()
                batch = next(iterator)
                window["wait"] += time.perf_counter() - t0
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        out = model(batch["frames"])
                    loss = stage1_loss(out, batch["labels"], model_cfg.afr_loss_weight)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg["optim"]["clip_grad"] > 0:
                        accelerator.clip_grad_norm_(model.parameters(), cfg["optim"]["clip_grad"])
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                window["loss"] += loss.detach() / train_cfg["grad_accum"]
                state["batches_in_epoch"] += 1
                if not accelerator.sync_gradients:
                    continue
                window["lr"] = scheduler.get_last_lr()[0]      # the lr this step used
                scheduler.step()
                state["step"] += 1
                window["steps"] += 1
                bar.update(1)
                if state["step"] % train_cfg["log_every"] == 0 or state["step"] == total_steps:
                    _log_window(log, bar, accelerator, state, window, clips_per_step)
                signal_name = watch.agreed()
                if signal_name is not None:
                    path = save(ckpt_io.step_name(state["step"])) if last_saved != state["step"] else \
                        ckpt_io.checkpoints_root(out_dir) / ckpt_io.step_name(state["step"])
                    if main:
                        write_marker(out_dir, step=state["step"], epoch=state["epoch"],
                                     signal_name=signal_name, checkpoint=path)
                    accelerator.print(f"pre-empted by {signal_name} at step {state['step']}: "
                                      f"checkpoint {path}, exiting with status {EXIT_PREEMPTED}")
                    status = EXIT_PREEMPTED
                    break
                if train_cfg["ckpt_every"] and state["step"] % train_cfg["ckpt_every"] == 0:
                    save(ckpt_io.step_name(state["step"]))
                    last_saved = state["step"]
            if status:
                break
            if state["batches_in_epoch"] >= batches:        # a whole epoch
                state["epoch"] += 1
                state["batches_in_epoch"] = 0
                every = cfg["eval"]["every_epochs"]
                final = state["step"] == total_steps and cfg["eval"]["final"]     # evaluated below
                if every and state["epoch"] % every == 0 and not final:
                    evaluate()
                if last_saved != state["step"]:
                    save(ckpt_io.step_name(state["step"]))
                    last_saved = state["step"]
        bar.close()
        if status == 0 and cfg["eval"]["final"]:
            evaluate()
            if last_saved != state["step"]:
                save(ckpt_io.step_name(state["step"]))
    if main:
        log.close()
        curves = plot_curves(out_dir)
        best = state["best"]
        accelerator.print(f"curves: {curves}\ncheckpoints: {ckpt_io.checkpoints_root(out_dir)}"
                          + (f"\nbest {best['metric']} {best['value']:.2f} at step {best['step']}: "
                             f"{ckpt_io.checkpoints_root(out_dir) / ckpt_io.BEST}" if best else ""))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return status


def _log_window(log: RunLog, bar, accelerator: Accelerator, state: dict, window: dict,
                clips_per_step: int) -> None:
    elapsed = time.perf_counter() - window["start"]
    stats = torch.cat([window["loss"].reshape(1),
                       torch.tensor([window["wait"], elapsed], dtype=torch.float64, device=accelerator.device)])
    if accelerator.num_processes > 1:
        stats = accelerator.reduce(stats, reduction="mean")
    loss, wait, elapsed = stats.tolist()
    loss /= window["steps"]
    clips_per_s = clips_per_step * window["steps"] / max(elapsed, 1e-9)
    wait_frac = wait / max(elapsed, 1e-9)
    lr = window["lr"]
    log.train_step(step=state["step"], epoch=state["epoch"], loss=loss, lr=lr, clips_per_s=clips_per_s,
                   data_wait_frac=wait_frac)
    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2g}", clips_s=f"{clips_per_s:.1f}", wait=f"{wait_frac:.0%}")
    window["loss"].zero_()
    window.update(steps=0, wait=0.0, start=time.perf_counter())
