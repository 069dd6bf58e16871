"""What a run leaves for people: metrics.csv and eval.csv, TensorBoard scalars, curves.png, and
skipped.jsonl, the training samples replaced under `data.bad_sample: skip` (metrics.csv's `skipped`
column counts them, over all ranks, up to each step).

Only the main process writes. On resume the CSVs and skipped.jsonl keep the rows up to the resumed step,
so a pre-empted and requeued run reads as one run.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict
from pathlib import Path

TRAIN_FIELDS = ("step", "epoch", "loss", "lr", "clips_per_s", "data_wait_frac", "skipped")
SKIPPED = "skipped.jsonl"


def _truncate_csv(path: Path, max_step: int) -> None:
    rows = read_csv(path)
    if not rows:
        return
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if int(r["step"]) <= max_step)


def _truncate_jsonl(path: Path, max_step: int) -> int:
    """Keep the lines of steps up to `max_step`; returns how many were kept."""
    if not path.is_file():
        return 0
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= max_step]
    path.write_text("".join(line + "\n" for line in kept))
    return len(kept)


class SkipReporter:
    """Hands the run log the samples this rank's loader replaced since the last call, gathered from every
    rank (a collective: every rank calls it at the same steps)."""

    def __init__(self, skip_log):
        self.skip_log, self.reported = skip_log, 0

    def new(self, accelerator) -> list[dict]:
        fresh = self.skip_log.entries[self.reported:]
        self.reported += len(fresh)
        rows = [{"rank": accelerator.process_index, **asdict(skip)} for skip in fresh]
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object
            rows = gather_object(rows)
        return rows


class RunLog:
    def __init__(self, out_dir: str | Path, *, enabled: bool, resume_step: int | None = None):
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self.metrics = self.out_dir / "metrics.csv"
        self.evals = self.out_dir / "eval.csv"
        self.skipped = self.out_dir / SKIPPED
        self.skipped_total = 0
        self._tb = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            for path in (self.metrics, self.evals, self.skipped):
                path.unlink(missing_ok=True)
        else:
            _truncate_csv(self.metrics, resume_step)
            _truncate_csv(self.evals, resume_step)
            self.skipped_total = _truncate_jsonl(self.skipped, resume_step)
        from torch.utils.tensorboard import SummaryWriter
        self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=resume_step)

    def _append(self, path: Path, row: dict) -> None:
        new = not path.is_file()
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def skips(self, step: int, rows: list[dict]) -> None:
        """Samples replaced by the loaders (SkipReporter.new) up to `step`: appended to skipped.jsonl and
        counted in metrics.csv's `skipped` column; said once per step that brings new ones."""
        if not (self.enabled and rows):
            return
        with open(self.skipped, "a") as fh:
            fh.writelines(json.dumps({"step": step, **row}, sort_keys=True) + "\n" for row in rows)
        self.skipped_total += len(rows)
        print(f"step {step}: {len(rows)} bad training sample(s) skipped ({self.skipped_total} in all; keys and "
              f"reasons in {self.skipped})", flush=True)

    def train_step(self, *, step: int, epoch: int, loss: float, lr: float, clips_per_s: float,
                   data_wait_frac: float, terms: dict[str, float] | None = None) -> None:
        """One metrics.csv row; ``terms`` are the objective's parts (ce, and in stage 2 fm: its L_fm)."""
        if not self.enabled:
            return
        # repr keeps every bit of the loss: resumed and uninterrupted runs compare exactly
        row = {"step": step, "epoch": epoch, "loss": repr(float(loss)),
               **{name: repr(float(value)) for name, value in sorted((terms or {}).items())},
               "lr": repr(float(lr)), "clips_per_s": f"{clips_per_s:.3f}", "data_wait_frac": f"{data_wait_frac:.4f}",
               "skipped": self.skipped_total}
        self._append(self.metrics, row)
        for name in row.keys() - {"step", "epoch", "skipped"}:
            self._tb.add_scalar(f"train/{name}", float(row[name]), step)

    def evaluation(self, *, step: int, epoch: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._append(self.evals, {"step": step, "epoch": epoch, "split": split,
                                  **{k: f"{v:.6f}" for k, v in metrics.items()}})
        for name, value in metrics.items():
            self._tb.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def plot_curves(out_dir: str | Path) -> Path:
    """curves.png: training loss (and lr) by step; evaluation accuracies by step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    train = read_csv(out_dir / "metrics.csv")
    evals = read_csv(out_dir / "eval.csv")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        steps = [int(r["step"]) for r in train]
        ax_loss.plot(steps, [float(r["loss"]) for r in train], label="train loss")
        ax_lr = ax_loss.twinx()
        ax_lr.plot(steps, [float(r["lr"]) for r in train], color="tab:gray", alpha=0.5, label="lr")
        ax_lr.set_ylabel("lr")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training")
    metric_names = [k for k in (evals[0] if evals else {}) if "top" in k]      # accuracies, not counts
    for name in metric_names:
        points = [(int(r["step"]), float(r[name])) for r in evals if r.get(name) not in (None, "")
                  and not math.isnan(float(r[name]))]
        if points:
            ax_acc.plot(*zip(*points), marker="o", label=name)
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("evaluation")
    if metric_names:
        ax_acc.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
