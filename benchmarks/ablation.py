"""The paper's ablation rows (Tables 5, 6 and 7) trained on synth's order-only task, on the CPU.

    python benchmarks/ablation.py --work /tmp/ablation                 # every row x 3 seeds, then the table
    python benchmarks/ablation.py --work /tmp/ablation --rows tsn,tsm --seeds 1 --epochs 2   # a quick look

Runs go ``--jobs`` at a time (default 2) with ``--threads`` torch threads each (default 1): on 2 cores a
two-thread torch team collapses whenever anything else wants a core (measured on TSM+W3 here: 2.5 clips/s
with 2 threads beside other jobs, 36 with 1), so two one-thread runs use the cores best.

The task (``pipeline/synth.py --task order``) has 5 pairs of classes whose clips are the same frames in
opposite orders, so a frame-bag model (TSN) is at chance within each pair by construction, and two pairs
need "what" and "where". Every run is the real trainer (``train/run.py --cfg launch/ablation.yaml``: the
recipe, ResNet-18 from scratch, 4 segments of 48x48) with the row's ``model.*`` settings and a seed,
scored by its final evaluation on the validation split (one centre view per clip). Resumable: a run with
a ``result.json`` is not run again, a killed one continues from its last checkpoint; checkpoints are
deleted once a run is scored (``--keep-checkpoints`` keeps them). Whatever results exist end up in
``<work>/ablation.md`` (top-1 mean +- std over seeds, pair accuracy, within-pair accuracy, GFLOPs at the
paper's setting, the paper's numbers beside) and ``<work>/ablation.png``.

The MFR rows (stage 2) train a student against the teacher cache of their stage-1 row's run of the same
seed (its ``teacher`` field): the teacher run keeps its checkpoints, its cache holds one view per epoch
of the recipe (``data.train_views`` = ``train.epochs``, so the student sees as many distinct views as a
stage-1 run), and the student starts from scratch with the recipe, ``train.objective: mfr`` and the
defaults' ``mfr.weight``/``reduction`` (see ``run_mfr``).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import cli  # first: keeps benchmarks/ off sys.path when run by path

import yaml

from pipeline.atomic import atomic_open
from pipeline.errors import ConfigError
from pipeline.synth import ORDER_CLASSES, synthesize_and_shard
from train.run_log import read_csv

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "launch" / "ablation.yaml"
# The order task's data: 10 classes (5 pairs) x 48 clips (24 train, 12 val, 12 test), 20 frames of 64x48:
# 20 / 4 segments is odd, so the validation frames of a clip and of its reversed pair-mate are the same set.
DATA = dict(classes=len(ORDER_CLASSES), clips_per_class=48, num_frames=20, width=64, height=48)
PAPER_SETTING = dict(depth=50, frames=16, classes=174, size=224)   # the ablation tables' model: R50, 16 f


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    model: dict = field(default_factory=dict)      # model.* settings over launch/ablation.yaml
    paper: str = "-"                               # the paper's top-1 (Something-Something V1), with where
    paper_gflops: str = "-"
    teacher: str | None = None                     # MFR rows: the stage-1 row whose run is the teacher

    @property
    def mfr(self) -> bool:
        return self.teacher is not None


W3 = {"arch": "tsm_w3"}
ROWS = (
    Row("tsn", "TSN", {"arch": "tsn"}, "19.7 (T1, 8 f)", "33 (8 f)"),
    Row("tsm", "TSM", {"arch": "tsm"}, "47.2 (T6, T7)", "65.0"),
    Row("tsm_cbam", "TSM+CBAM", {"arch": "tsm_cbam"}, "49.1 (T6, T7)", "66.5"),
    Row("tsm_nl", "TSM+NL", {"arch": "tsm_nl"}, "49.8 (T6)", "115.0"),
    Row("w3", "TSM+W3 w/o MFR (stage 1)", W3, "50.3 (T5) / 50.2 (T7)", "67.1"),
    Row("w3_no_afr", "W3 w/o AFR, w/o MFR", {**W3, "afr": False}),
    Row("w3_no_sa", "W3 w/o SA, w/o MFR", {**W3, "w3_spatial": False}),
    Row("w3_no_ta", "W3 w/o TA, w/o MFR", {**W3, "w3_temporal": False}),
    # the project's own choices, measured (w3 above runs the defaults)
    Row("w3_afr_small", "TSM+W3, afr_init small", {**W3, "afr_init": "small"}),
    Row("w3_afr_default", "TSM+W3, afr_init default", {**W3, "afr_init": "default"}),
    Row("w3_paper_init", "TSM+W3, attention_init paper", {**W3, "attention_init": "paper"}),
    Row("w3_norm_none", "TSM+W3, w3_norm none", {**W3, "w3_norm": "none"}),
    Row("w3_afr_loss", "TSM+W3, afr_loss_weight 0.5", {**W3, "afr_loss_weight": 0.5}),
    Row("w3_afr_loss1", "TSM+W3, afr_loss_weight 1", {**W3, "afr_loss_weight": 1.0}),     # the paper's "sum"
    # MFR rows (stage 2): see run_mfr
    Row("w3_mfr", "TSM+W3 full (with MFR)", W3, "52.6 (T5, T6, T7)", "67.1", teacher="w3"),
    Row("w3_no_afr_mfr", "W3 w/o AFR (with MFR)", {**W3, "afr": False}, "50.1 (T5)", teacher="w3_no_afr"),
    Row("w3_no_sa_mfr", "W3 w/o SA (with MFR)", {**W3, "w3_spatial": False}, "49.8 (T5)", teacher="w3_no_sa"),
    Row("w3_no_ta_mfr", "W3 w/o TA (with MFR)", {**W3, "w3_temporal": False}, "47.2 (T5)", teacher="w3_no_ta"),
    Row("cbam_mfr", "TSM+CBAM w/ MFR", {"arch": "tsm_cbam"}, "50.5 (T7)", "66.5", teacher="tsm_cbam"),
)
ROW_BY_NAME = {row.name: row for row in ROWS}
TEACHERS = {row.teacher for row in ROWS if row.teacher}


def run_mfr(row: Row, seed: int, shards_root: Path, work: Path, args: argparse.Namespace) -> dict | None:
    """Stage 2: the teacher row's run of this seed (trained first, its checkpoints kept) -> its teacher cache
    (train/teacher_cache.py build) -> the student (train/run.py, train.objective mfr), scored like stage 1."""
    teacher = run_dir(work, ROW_BY_NAME[row.teacher], seed)
    if not (teacher / "checkpoints").is_dir():
        print(f"   {row.name} seed {seed}: its teacher {teacher} has no checkpoints (train it first, with "
              f"--rows {row.teacher})", flush=True)
        return None
    cache = work / "caches" / row.teacher / f"seed{seed}"
    views = int(args.epochs or yaml.safe_load(RECIPE.read_text())["train"]["epochs"])
    stage2 = {"mfr.teacher": teacher, "mfr.cache": cache, "data.train_views": views}
    build = cache_command(row, seed, shards_root, stage2)
    env = _env(args)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.parent / f"seed{seed}.build.log", "a") as log:
        if subprocess.run(build, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            print(f"   building the cache of {row.teacher} seed {seed} failed: see {log.name}", flush=True)
            return None
    return run_stage1(row, seed, shards_root, work, args, extra={**stage2, "train.objective": "mfr"})


def cache_command(row: Row, seed: int, shards_root: Path, stage2: dict) -> list[str]:
    cmd = [sys.executable, "train/teacher_cache.py", "build", "--cfg", str(RECIPE)]
    sets = {"data.shards": shards_root, "seed": seed, **{f"model.{k}": v for k, v in row.model.items()}, **stage2}
    return cmd + [a for key, value in sets.items()
                  for a in ("--set", f"{key}={json.dumps(value) if isinstance(value, bool) else value}")]


def _env(args: argparse.Namespace) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(args.threads),
                MKL_NUM_THREADS=str(args.threads))


def run_dir(work: Path, row: Row, seed: int) -> Path:
    return work / "runs" / row.name / f"seed{seed}"


def trainer_command(row: Row, seed: int, shards_root: Path, out: Path, epochs: int | None,
                    extra: dict | None = None) -> list[str]:
    sets = {"data.shards": shards_root, "out_dir": out, "seed": seed,
            **{f"model.{key}": value for key, value in row.model.items()}, **(extra or {})}
    if epochs is not None:
        sets["train.epochs"] = epochs
    cmd = [sys.executable, "train/run.py", "--cfg", str(RECIPE), "--resume", "auto"]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={json.dumps(value) if isinstance(value, bool) else value}"]
    return cmd


def run_stage1(row: Row, seed: int, shards_root: Path, work: Path, args: argparse.Namespace,
               extra: dict | None = None) -> dict | None:
    """Train and score one run, unless its result.json exists; None if the trainer failed (log kept).
    ``extra``: more settings (stage 2's). A teacher's run keeps its checkpoints."""
    out = run_dir(work, row, seed)
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    print(f"== {row.name} seed {seed}: {out}", flush=True)
    started = time.perf_counter()
    with open(out / "train.log", "a") as log:
        status = subprocess.run(trainer_command(row, seed, shards_root, out, args.epochs, extra), cwd=REPO,
                                env=_env(args), stdout=log, stderr=subprocess.STDOUT).returncode
    if status != 0:
        print(f"   failed with status {status}: see {out / 'train.log'}", flush=True)
        return None
    names = json.loads((shards_root / "sthv2" / "manifest.json").read_text())["classes"]["label"]
    epochs = yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"]
    result = {"row": row.name, "seed": seed, "model": row.model, "seconds": time.perf_counter() - started,
              "epochs": epochs, "threads": args.threads, **score_run(out, names)}
    with atomic_open(done, "w") as fh:
        fh.write(json.dumps(result, indent=1))
    if not (args.keep_checkpoints or row.name in TEACHERS):
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    print(f"   top-1 {result['top1']:.1f}, pair {result['pair_acc']:.1f}, within pair {result['within_pair']:.1f}"
          f" ({result['seconds']:.0f} s)", flush=True)
    return result


def score_run(out: Path, class_names: list[str]) -> dict:
    """Top-1 of the final evaluation, and from its predictions: how often the predicted class is in the
    right pair, and how often it is right among those (TSN: 50 by construction)."""
    pair_of = [ORDER_CLASSES.index(name) // 2 for name in class_names]       # class id -> pair
    final = read_csv(out / "eval.csv")[-1]
    preds = [json.loads(line) for line in
             (out / "predictions" / f"val_step{int(final['step']):08d}.jsonl").read_text().splitlines()]
    pairs = [(p["label"]["top"][0], p["label"]["label"]) for p in preds]
    in_pair = [(guess, label) for guess, label in pairs if pair_of[guess] == pair_of[label]]
    return {"step": int(final["step"]), "clips": len(pairs), "top1": float(final["top1"]),
            "pair_acc": 100.0 * len(in_pair) / len(pairs),
            "within_pair": 100.0 * sum(g == lab for g, lab in in_pair) / max(1, len(in_pair))}


def gflops(row: Row, cache: Path) -> float:
    """Multiply-accumulates of the row's model at the paper's setting (ResNet-50, 16 x 224^2, 174 classes)."""
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    key = json.dumps(row.model, sort_keys=True)
    if key not in known:
        from w3model.flops import count
        options = {k: v for k, v in row.model.items() if k != "arch"}
        known[key] = count(row.model["arch"], **PAPER_SETTING, **options)["gflops"]
        with atomic_open(cache, "w") as fh:
            fh.write(json.dumps(known, indent=1))
    return known[key]


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.1f}" + (f" +- {std:.1f}" if len(values) > 1 else "")


def table(results: dict[str, list[dict]], work: Path) -> str:
    lines = ["| row | model settings | top-1 % (mean +- std) | seeds | pair acc % | within pair % | "
             "GFLOPs (R50 16x224^2) | paper top-1 (Sth-V1) | paper GFLOPs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in ROWS:
        runs = results.get(row.name, [])
        settings = ", ".join(f"{k}={v}" for k, v in row.model.items())
        if not runs:
            measured = ["not run", "-", "-", "-"]
        else:
            measured = [_mean_std([r["top1"] for r in runs]), str(len(runs)),
                        _mean_std([r["pair_acc"] for r in runs]), _mean_std([r["within_pair"] for r in runs])]
        lines.append(f"| {row.label} | {settings} | " + " | ".join(measured)
                     + f" | {gflops(row, work / 'gflops.json'):.2f} | {row.paper} | {row.paper_gflops} |")
    return "\n".join(lines) + "\n"


def goals(results: dict[str, list[dict]]) -> list[str]:
    """The issue's goals, judged on the seed means of what ran."""
    mean = {name: statistics.mean(r["top1"] for r in runs) for name, runs in results.items() if runs}
    lines = []
    if "tsn" in results and results["tsn"]:
        within = statistics.mean(r["within_pair"] for r in results["tsn"])
        lines.append(f"TSN within pair-chance (50 %): within-pair accuracy {within:.1f} % "
                     f"({'yes' if abs(within - 50) <= 5 else 'NO'})")
    if {"tsn", "tsm"} <= set(mean):
        lines.append(f"TSM >= TSN + 30 points: {mean['tsm']:.1f} vs {mean['tsn']:.1f} "
                     f"({'yes' if mean['tsm'] >= mean['tsn'] + 30 else 'NO'})")
    if {"tsm", "w3"} <= set(mean):
        lines.append(f"TSM+W3 >= TSM: {mean['w3']:.1f} vs {mean['tsm']:.1f} "
                     f"({'yes' if mean['w3'] >= mean['tsm'] else 'NO'})")
    return lines


def chart(results: dict[str, list[dict]], path: Path) -> Path:
    """Measured top-1 per row (mean, std bars, seeds as dots) beside the paper's top-1 where it has one."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(ROWS)
    fig, (ours, paper) = plt.subplots(1, 2, figsize=(11, 0.38 * len(rows) + 1.5), sharey=True,
                                      gridspec_kw={"width_ratios": [3, 2]})
    for y, row in enumerate(rows):
        runs = results.get(row.name, [])
        if runs:
            values = [r["top1"] for r in runs]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            ours.barh(y, statistics.mean(values), xerr=std, color="tab:blue", alpha=0.7, capsize=3)
            ours.plot(values, [y] * len(values), "k.", ms=4)
        else:
            ours.text(1, y, "not run", va="center", fontsize=8, color="gray")
        value = row.paper.split()[0]
        if value != "-":
            paper.barh(y, float(value), color="tab:gray", alpha=0.7)
            paper.text(float(value) + 0.5, y, row.paper, va="center", fontsize=7)
    ours.set_yticks(range(len(rows)), [r.label for r in rows], fontsize=8)
    ours.invert_yaxis()
    ours.axvline(10, ls=":", c="gray")
    ours.set_xlim(0, 100)
    ours.set_xlabel("top-1 % on the order-only task (val; 10 classes, 5 order pairs)")
    paper.set_xlim(0, 70)
    paper.set_xlabel("paper: top-1 % on Something-Something V1")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def collect(work: Path) -> dict[str, list[dict]]:
    """Every scored run under <work>/runs, by row."""
    results: dict[str, list[dict]] = {}
    for done in sorted(work.glob("runs/*/seed*/result.json")):
        result = json.loads(done.read_text())
        results.setdefault(result["row"], []).append(result)
    return results


def pick_rows(names: str | None) -> list[Row]:
    if names is None:
        return list(ROWS)
    known = {row.name: row for row in ROWS}
    unknown = [n for n in names.split(",") if n not in known]
    if unknown:
        raise ConfigError(f"--rows: unknown {', '.join(unknown)}; rows: {', '.join(known)}")
    return [known[n] for n in names.split(",")]


@cli.tool("benchmarks/ablation.py")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/ablation.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="data, run folders, table and chart")
    parser.add_argument("--rows", help=f"comma-separated subset of: {', '.join(r.name for r in ROWS)}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per row (default 3)")
    parser.add_argument("--epochs", type=int, help="override the recipe's train.epochs (a quick look)")
    parser.add_argument("--clips-per-class", type=int, default=DATA["clips_per_class"],
                        help=f"synthetic clips per class, half for training, a quarter for validation "
                             f"(default {DATA['clips_per_class']}; fewer for a quick look)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--keep-checkpoints", action="store_true")
    args = parser.parse_args(argv)
    rows = pick_rows(args.rows)
    rows += [ROW_BY_NAME[row.teacher] for row in rows if row.mfr and ROW_BY_NAME[row.teacher] not in rows]
    args.work.mkdir(parents=True, exist_ok=True)
    data = dict(DATA, clips_per_class=args.clips_per_class)
    shards = synthesize_and_shard("sthv2", args.work / f"data-{args.clips_per_class}", codec="copy",
                                  splits="train,val", task="order", **data)
    jobs = [(row, seed) for seed in range(args.seeds) for row in rows]
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:   # stage 1 first: the teachers
        runs = list(pool.map(lambda job: run_stage1(job[0], job[1], shards.parent, args.work, args),
                             [job for job in jobs if not job[0].mfr]))
        runs += list(pool.map(lambda job: run_mfr(job[0], job[1], shards.parent, args.work, args),
                              [job for job in jobs if job[0].mfr]))
    jobs = [job for job in jobs if not job[0].mfr] + [job for job in jobs if job[0].mfr]
    failed = [f"{row.name} seed {seed}" for (row, seed), run in zip(jobs, runs) if run is None]
    results = collect(args.work)
    text = table(results, args.work)
    summary = goals(results)
    (args.work / "ablation.md").write_text(text + "\n" + "".join(f"- {line}\n" for line in summary))
    png = chart(results, args.work / "ablation.png")
    print("\n" + text + "\n".join(summary) + f"\n\ntable: {args.work / 'ablation.md'}\nchart: {png}")
    if failed:
        print(f"failed runs (logs in their folders): {', '.join(failed)}", file=sys.stderr)
        return cli.EXIT_FINDINGS
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
