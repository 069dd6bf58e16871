"""Training: DALI loader -> TSM(+W3) -> SGD, with evaluation, checkpoints and pre-emption; stage 1 or stage 2
(MFR) by `train.objective` (train/objectives.py).

`fit` runs one process, DDP and DeepSpeed alike (the differences live in train/distributed.py): it takes
the run folder's lock, sets up a `Trainer` (setup), restores a checkpoint, trains (the loop) and finishes.
`evaluate_checkpoint` evaluates a checkpoint without a training split. A step is one optimiser step
(`train.grad_accum` micro-batches); an epoch is `len(loader) // grad_accum` steps, so every rank takes the
same number of steps. A non-finite loss or weights stop the run (train/nonfinite.py).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm

from pipeline.atomic import atomic_write
from pipeline.cli import EXIT_PREEMPTED
from pipeline.errors import ConfigError, ResourceError, W3Error
from pipeline.loader import build_loader
from pipeline.locking import FolderLock
from train import checkpoint as ckpt_io
from train.config import dump_config, global_batch, model_config, scaled_lr, shards_dir
from train.distributed import agree, average_bn_buffers, build_accelerator, everyone, uses_deepspeed
from train.evaluate import (aggregate_views, collect_scores, metric_names, score_clips, write_epic_submission,
                            write_predictions)
from train.nonfinite import LossWatch, check_weights
from train import stage2
from train.objectives import build_objective
from train.optim import StepSchedule, build_optimizer
from train.preemption import PreemptionWatch, clear_marker, write_marker
from train.run_log import RunLog, SkipReporter, plot_curves
from w3model import VideoNet
from w3model.compile import compile_model
from w3model.pretrained import scratch_warning


def loader_device(accelerator: Accelerator) -> str:
    return str(accelerator.device) if accelerator.device.type == "cuda" else "cpu"


def make_loader(cfg, accelerator: Accelerator, role: str):
    """The loader of `role` (train | eval) with the settings checked when the config was loaded."""
    return build_loader(shards_dir(cfg), cfg.loaders[role], rank=accelerator.process_index,
                        world_size=accelerator.num_processes, device=loader_device(accelerator))


def check_labelled(cfg, loader) -> None:
    """A split without labels would train on a NaN loss at every step: refuse it up front, from the
    metadata of the first sample of up to 8 of its shards (the fields pipeline/batches.py reads labels from)."""
    fields = ["label", *(f"{head}_class" for head in loader.heads if head != "label")]
    shards = loader.shards
    picks = range(0, len(shards.files), max(1, len(shards.files) // 8))
    for shard in list(picks)[:8]:
        meta, _ = shards.read(shard, 0)
        if any(meta.get(field) is not None for field in fields):
            return
    raise ConfigError(f"{cfg.label('data.train_split')}: split {shards.split!r} of {shards.root} has no labels "
                      f"({' / '.join(fields)} null in its samples); train on a labelled split, and use an "
                      f"unlabelled one only with eval.split (e.g. --eval-only to write its predictions)")


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


def lock_out_dir(cfg, accelerator: Accelerator) -> FolderLock | None:
    """The main process holds out_dir's lock for the whole run; every rank stops if it is taken."""
    lock, error = None, None
    if accelerator.is_main_process:
        try:
            lock = FolderLock(cfg["out_dir"], what="out_dir").acquire()
        except ResourceError as err:
            error = err
    agree(accelerator, error)
    return lock


def fit(cfg: dict, resume: str | None = None) -> int:
    """Train per `cfg`: setup, restore, loop, finish. Returns the process exit status (0, or EXIT_PREEMPTED
    after a pre-emption)."""
    accelerator = build_accelerator(cfg)
    set_seed(cfg["seed"])
    lock = lock_out_dir(cfg, accelerator)
    trainer = None
    try:
        trainer = Trainer(cfg, accelerator)
        resumed = trainer.restore(resume)
        status = trainer.train(resumed is not None)
        trainer.finish()
        return status
    finally:
        if trainer is not None:
            trainer.close()
        lock.release() if lock is not None else None


def evaluate_checkpoint(cfg: dict, resume: str | None = "best") -> int:
    """`--eval-only`: the checkpoint `resume` names (default out_dir's best) on eval.split with eval.mode's
    protocol. No training split is read, and no lock taken (it writes only predictions), so a running
    training can be evaluated."""
    accelerator = build_accelerator(cfg)
    set_seed(cfg["seed"])
    trainer = Trainer(cfg, accelerator, eval_only=True)
    path = trainer.restore(resume or "best", eval_only=True)
    trainer.evaluate_only(path)
    return 0


class Trainer:
    """One run's parts and counters: set up here, then `restore`, `train` and `finish`."""

    def __init__(self, cfg: dict, accelerator: Accelerator, eval_only: bool = False):
        self.cfg, self.accelerator = cfg, accelerator
        self.out_dir = Path(cfg["out_dir"])
        self.main = accelerator.is_main_process
        train_cfg = cfg["train"]
        self.evaluator = None
        if eval_only:                   # the model's heads from the split evaluated; no training split needed
            self.loader, self.steps_per_epoch = None, 1
            heads = dict(make_loader(cfg, accelerator, "eval").heads)
        else:
            self.loader = make_loader(cfg, accelerator, "train")
            heads = dict(self.loader.heads)
            self.steps_per_epoch = self._steps_per_epoch()
            check_labelled(cfg, self.loader)
        self.evaluator = Evaluator(cfg, accelerator, heads, self.out_dir)
        if cfg["eval"]["best_metric"] not in metric_names(heads):
            raise ConfigError(f"{cfg.label('eval.best_metric')}: {cfg['eval']['best_metric']!r} is not one of "
                              f"{', '.join(metric_names(heads))} (the metrics of the shards' heads {sorted(heads)})")
        model_cfg = stage2.student_config(cfg, model_config(cfg, heads))
        if (warning := scratch_warning(model_cfg.pretrained, "model.pretrained" in cfg.origins)) and not eval_only:
            accelerator.print(f"warning: {warning}")
        self.objective = build_objective(cfg, model_cfg.afr_loss_weight)
        self.teacher = None if eval_only else stage2.teacher_source(cfg, accelerator, self.loader, model_cfg)
        self._build_model(model_cfg, None if eval_only else stage2.initial_weights(cfg))
        self.total_steps = train_cfg["epochs"] * self.steps_per_epoch
        if train_cfg["max_steps"]:
            self.total_steps = min(self.total_steps, train_cfg["max_steps"])
        self.state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "best": None,
                      "config": cfg, "model": model_cfg.to_dict(), "heads": heads}
        self.watch = LossWatch(train_cfg["max_nonfinite_steps"], accelerator.device,
                               cfg.label("train.max_nonfinite_steps"))
        self.last_saved = -1
        self.log = None
        # the loss stays on the device until a log step: no per-step host <-> device sync
        self.window = {"loss": torch.zeros((), dtype=torch.float64, device=accelerator.device), "steps": 0, "timed_steps": 0,
                       "wait": 0.0, "start": time.perf_counter(), "lr": self.lr, "terms": {}}
        if self.main and not eval_only:
            self._prepare_out_dir()
        accelerator.wait_for_everyone()

    def _steps_per_epoch(self) -> int:
        train_cfg = self.cfg["train"]
        steps = len(self.loader) // train_cfg["grad_accum"]
        if steps == 0:
            raise ConfigError(f"{self.cfg.label('train.grad_accum')}: {len(self.loader)} batches per epoch per rank "
                              f"(at train.batch_size {train_cfg['batch_size']}) is fewer than train.grad_accum="
                              f"{train_cfg['grad_accum']}")
        return steps

    def _build_model(self, model_cfg, weights: dict | None) -> None:
        """Model (from `weights` when given: stage 2's mfr.init teacher), optimiser and LR schedule,
        prepared by accelerate."""
        model = VideoNet(model_cfg)
        if weights is not None:
            model.load_state_dict(weights, strict=True)
        self.lr = scaled_lr(self.cfg, self.accelerator.num_processes)
        optimizer = build_optimizer(model, self.cfg, self.lr)
        # a pure function of the step: nothing of it is saved (nor unpickled on resume)
        self.schedule = StepSchedule(optimizer, self.cfg, self.steps_per_epoch)
        # what a checkpoint takes, about: weights, momentum and (DeepSpeed) fp32 master copies
        self.ckpt_estimate = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
        # in place, before accelerate/DeepSpeed wrap it: the state_dict keys stay the eager model's
        compile_model(model, self.cfg["train"]["compile"])
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)

    def _prepare_out_dir(self) -> None:
        """Main process: the run folder, its config, no temporaries of a killed run."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        ckpt_io.clean_temporaries(self.out_dir)
        dump_config(self.cfg, self.out_dir / "config.yaml")
        if uses_deepspeed(self.accelerator):         # the effective DeepSpeed config, for the record
            atomic_write(self.out_dir / "deepspeed_config.json", json.dumps(
                self.accelerator.state.deepspeed_plugin.deepspeed_config, indent=1, default=str))

    def restore(self, resume: str | None, eval_only: bool = False) -> Path | None:
        """Load the checkpoint `--resume` names (checked first; `auto` falls back past damaged ones)."""
        accelerator = self.accelerator
        chosen, error = None, None
        if self.main:                   # checks the files once; the other ranks follow its choice
            try:
                chosen = ckpt_io.resolve_resume(resume, self.out_dir, say=accelerator.print)
            except W3Error as err:
                error = err
        agree(accelerator, error)
        path = everyone(accelerator, [chosen] if self.main else [])[0]
        if eval_only and path is None:
            raise ResourceError(f"--eval-only: no complete checkpoint in {ckpt_io.checkpoints_root(self.out_dir)} "
                                f"(train first, or pass --resume DIR)")
        if path is None:
            return None
        saved = ckpt_io.load_checkpoint(accelerator, path, self.loader)
        self.state.update({k: saved[k] for k in ("step", "epoch", "batches_in_epoch", "best")})
        self.last_saved = self.state["step"]
        if self.main and not eval_only:
            clear_marker(self.out_dir)
            accelerator.print(f"resumed from {path} at step {self.state['step']} (epoch {self.state['epoch']})")
        return path

    def evaluate_only(self, ckpt: Path) -> None:
        metrics = self.evaluator(self.model, self.state["step"], self.state["epoch"])
        self.accelerator.print(f"{ckpt} on {self.cfg['eval']['split']} ({self.cfg['eval']['mode']} protocol): "
                               + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        self.accelerator.end_training()

    def save(self, name: str) -> Path:
        """A checkpoint of the current step; never of non-finite weights."""
        started = time.perf_counter()
        self.watch.check(self.state["step"])
        check_weights(self.model, f"saving checkpoint {name}")
        average_bn_buffers(self.model, self.accelerator)
        path = ckpt_io.save_checkpoint(self.accelerator, self.out_dir, name, self.state, self.loader,
                                       estimate=self.ckpt_estimate)
        if self.main and name != ckpt_io.BEST:
            ckpt_io.rotate(self.out_dir, self.cfg["train"]["keep_checkpoints"])
        if name != ckpt_io.BEST:
            self.last_saved = self.state["step"]
        self.window["start"] += time.perf_counter() - started     # clips/s counts training time only
        return path

    def evaluate(self) -> None:
        """Evaluate; a better value of eval.best_metric is saved as `best` (a non-finite model never is)."""
        started = time.perf_counter()
        self.watch.check(self.state["step"])
        check_weights(self.model, "evaluating it")
        state, cfg = self.state, self.cfg
        metrics = self.evaluator(self.model, state["step"], state["epoch"])
        self.log.evaluation(step=state["step"], epoch=state["epoch"], split=cfg["eval"]["split"], metrics=metrics)
        self.accelerator.print(f"eval step {state['step']}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
        self.window["start"] += time.perf_counter() - started
        value = metrics.get(cfg["eval"]["best_metric"])
        best = state["best"]
        if value is not None and (best is None or value > best["value"]):
            state["best"] = {"metric": cfg["eval"]["best_metric"], "value": value, "step": state["step"]}
            self.save(ckpt_io.BEST)

    def train(self, resumed: bool) -> int:
        """The epochs up to the total step count; returns 0, or EXIT_PREEMPTED after a pre-emption."""
        cfg, state, accelerator = self.cfg, self.state, self.accelerator
        self.log = RunLog(self.out_dir, enabled=self.main, resume_step=state["step"] if resumed else None)
        # bad samples replaced under data.bad_sample: skip, and (stage 2) MFR terms dropped for damaged records
        self.skips = [SkipReporter(self.loader.skipped)] + \
            ([SkipReporter(self.teacher.skipped)] if self.teacher is not None else [])
        accelerator.print(
            f"{accelerator.distributed_type} x{accelerator.num_processes}: {cfg['model']['arch']}-R"
            f"{cfg['model']['depth']} heads {state['heads']}, global batch "
            f"{global_batch(cfg, accelerator.num_processes)}, lr {self.lr:g}, {self.steps_per_epoch} steps/epoch, "
            f"{self.total_steps} steps, out_dir {self.out_dir}")
        self.bar = tqdm(total=self.total_steps, initial=state["step"],
                        disable=not (self.main and cfg["train"]["progress"]), dynamic_ncols=True, desc="train")
        self.model.train()
        self.window["start"] = time.perf_counter()
        self.compiling = cfg["train"]["compile"] != "none"
        with PreemptionWatch() as watch:
            while state["step"] < self.total_steps:
                status = self._epoch(watch)
                if status:
                    self.bar.close()
                    return status
                if state["batches_in_epoch"] >= self.steps_per_epoch * cfg["train"]["grad_accum"]:
                    self._end_epoch()
            self.bar.close()
            if cfg["eval"]["final"]:
                self.evaluate()
            if self.last_saved != state["step"]:      # the trained weights, whatever eval.final says
                self.save(ckpt_io.step_name(state["step"]))
        return 0

    def _epoch(self, watch: PreemptionWatch) -> int:
        """Steps of the current epoch up to its end or the total; EXIT_PREEMPTED when pre-empted, else 0."""
        state, train_cfg = self.state, self.cfg["train"]
        if state["batches_in_epoch"] == 0:
            self.loader.set_epoch(state["epoch"])
        if self.teacher is not None:
            self.teacher.start_epoch(state["epoch"], state["batches_in_epoch"])
        batches = self.steps_per_epoch * train_cfg["grad_accum"]
        iterator = iter(self.loader)
        while state["batches_in_epoch"] < batches and state["step"] < self.total_steps:
            if not self._micro_batch(iterator):
                continue
            if state["step"] % train_cfg["log_every"] == 0 or state["step"] == self.total_steps:
                self.log.skips(state["step"], [row for r in self.skips for row in r.new(self.accelerator)])
                self._log_window()
            signal_name = watch.agreed()
            if signal_name is not None:
                self._preempted(signal_name)
                return EXIT_PREEMPTED
            if train_cfg["ckpt_every"] and state["step"] % train_cfg["ckpt_every"] == 0:
                self.save(ckpt_io.step_name(state["step"]))
        return 0

    def _micro_batch(self, iterator) -> bool:
        """One micro-batch forward and backward; True when it completed an optimiser step."""
        state, window, accelerator = self.state, self.window, self.accelerator
        t0 = time.perf_counter()
        batch = next(iterator)
        if self.teacher is not None and self.teacher.is_data:     # stage 2: the cached features of this batch
            self.teacher.attach(batch, state["batches_in_epoch"])
        window["wait"] += time.perf_counter() - t0
        if self.teacher is not None and not self.teacher.is_data:  # stage 2, online: the teacher's forward
            self.teacher.attach(batch, state["batches_in_epoch"])
        lr = self.schedule.apply(state["step"])
        with accelerator.accumulate(self.model):
            with accelerator.autocast():
                out = self.model(batch["frames"])
            loss, terms = self.objective(out, batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and self.cfg["optim"]["clip_grad"] > 0:
                accelerator.clip_grad_norm_(self.model.parameters(), self.cfg["optim"]["clip_grad"])
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        window["loss"] += loss.detach() / self.cfg["train"]["grad_accum"]
        for name, value in terms.items():
            window["terms"][name] = window["terms"].get(name, 0.0) + value.double() / self.cfg["train"]["grad_accum"]
        self.watch.add(loss)
        state["batches_in_epoch"] += 1
        if self.compiling:
            self._compiled(time.perf_counter() - t0)
        if not accelerator.sync_gradients:
            return False
        self.watch.end_step()
        window["lr"] = lr                              # the lr this step used
        state["step"] += 1
        window["steps"] += 1
        window["timed_steps"] += not window.pop("untimed", False)
        self.bar.update(1)
        return True

    def _compiled(self, seconds: float) -> None:
        """After the first micro-batch under train.compile: report its time (compiling forward and backward)
        apart, and leave the step it belongs to out of the clips/s of its window."""
        self.compiling = False
        self.accelerator.print(f"torch.compile (train.compile {self.cfg['train']['compile']}): the first "
                               f"micro-batch took {seconds:.1f} s with compiling; clips/s counts from the next")
        self.window.update(start=time.perf_counter(), wait=0.0, untimed=True)

    def _end_epoch(self) -> None:
        state, cfg = self.state, self.cfg
        state["epoch"] += 1
        state["batches_in_epoch"] = 0
        every = cfg["eval"]["every_epochs"]
        final = state["step"] == self.total_steps and cfg["eval"]["final"]     # evaluated by train()
        if every and state["epoch"] % every == 0 and not final:
            self.evaluate()
        if self.last_saved != state["step"]:
            self.save(ckpt_io.step_name(state["step"]))

    def _preempted(self, signal_name: str) -> None:
        """Checkpoint (unless this step has one), leave the PREEMPTED marker for the SLURM script."""
        state = self.state
        path = self.save(ckpt_io.step_name(state["step"])) if self.last_saved != state["step"] else \
            ckpt_io.checkpoints_root(self.out_dir) / ckpt_io.step_name(state["step"])
        if self.main:
            write_marker(self.out_dir, step=state["step"], epoch=state["epoch"], signal_name=signal_name,
                         checkpoint=path)
        self.accelerator.print(f"pre-empted by {signal_name} at step {state['step']}: checkpoint {path}, "
                               f"exiting with status {EXIT_PREEMPTED}")

    def close(self) -> None:
        """Stop what runs beside the loop (stage 2's read-ahead)."""
        if self.teacher is not None:
            self.teacher.close()

    def finish(self) -> None:
        if self.main:
            self.log.close()
            curves = plot_curves(self.out_dir)
            best = self.state["best"]
            root = ckpt_io.checkpoints_root(self.out_dir)
            self.accelerator.print(f"curves: {curves}\ncheckpoints: {root}"
                                   + (f"\nbest {best['metric']} {best['value']:.2f} at step {best['step']}: "
                                      f"{root / ckpt_io.BEST}" if best else ""))
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()

    def _log_window(self) -> None:
        """A metrics row (one sync, at log steps only), and the non-finite loss check that rides on it."""
        state, window, accelerator = self.state, self.window, self.accelerator
        elapsed = time.perf_counter() - window["start"]
        names = sorted(window["terms"])
        stats = torch.cat([window["loss"].reshape(1), *(window["terms"][n].reshape(1) for n in names),
                           torch.tensor([window["wait"], elapsed], dtype=torch.float64, device=accelerator.device)])
        if accelerator.num_processes > 1:
            stats = accelerator.reduce(stats, reduction="mean")
        loss, *term_values, wait, elapsed = stats.tolist()
        loss /= window["steps"]
        terms = {n: v / window["steps"] for n, v in zip(names, term_values)}
        clips_per_s = (global_batch(self.cfg, accelerator.num_processes) * window["timed_steps"] / max(elapsed, 1e-9)
                       if window["timed_steps"] else float("nan"))   # nan: only the compiling step in the window
        wait_frac = wait / max(elapsed, 1e-9)
        lr = window["lr"]
        self.log.train_step(step=state["step"], epoch=state["epoch"], loss=loss, lr=lr, clips_per_s=clips_per_s,
                            data_wait_frac=wait_frac, terms=terms)
        self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2g}", clips_s=f"{clips_per_s:.1f}", wait=f"{wait_frac:.0%}")
        window["loss"].zero_()
        window.update(steps=0, timed_steps=0, wait=0.0, start=time.perf_counter(), terms={})
        self.watch.check(state["step"])
