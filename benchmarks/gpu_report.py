"""The GPU suite's report: every step's JSON (benchmarks/gpu_suite.sh) against the issue's goals, as one JSON
and one markdown table. A step that failed or timed out is a row that says so, never a number.

    python benchmarks/gpu_report.py OUT_DIR [--smoke 1]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from pipeline import cli


def _load(out: Path, name: str) -> dict | None:
    path = out / f"{name}.json"
    try:
        text = path.read_text().strip()
        return json.loads(text) if text else None
    except (OSError, json.JSONDecodeError):
        return None


def _status(out: Path) -> dict[str, tuple[int, int]]:
    rows = {}
    path = out / "steps.tsv"
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, rc, seconds = line.split("\t")
        rows[name] = (int(rc), int(seconds))
    return rows


def _decode(d: dict) -> list[tuple[str, str, Any, bool | None]]:
    return [("DALI 'mixed' H.264 decode vs the CPU reference, PSNR (mean / worst)", ">= 30 dB mean",
             f"{d['psnr_db_mean']} / {d['psnr_db_min']} dB over {d['clips']} clips", d["psnr_db_mean"] >= 30)]


def _loader(d: dict) -> list:
    """benchmarks/loader_throughput.py --out: per codec, DALI with its batch callback and with the parallel
    source, each against the reference loader."""
    row, rows = d["results"][0], []
    ref = row["reference"]["clips_per_s"]
    for name, feed in (("dali", "batch callback"), ("dali_parallel", "parallel source")):
        dali, speedup = row[name]["clips_per_s"], row["speedup"][name]
        rows.append((f"loader: DALI on the GPU ({feed}) vs the reference with 16 workers, {row['codec']}",
                     ">= 4x and >= 1000 clips/s", f"{dali:.0f} vs {ref:.0f} clips/s = {speedup}x",
                     speedup >= 4 and dali >= 1000))
    return rows


def _step(d: dict) -> list:
    """benchmarks/model_step_time.py --json: rows "arch/mode" (mode: none = eager, or a torch.compile mode)."""
    results, rows, st = d["results"], [], d["settings"]
    setting = (f"{'bf16' if st['bf16'] else 'fp32'} batch {st['batch']} {st['size']}px"
               f"{' channels_last' if st['channels_last'] else ''}")
    for mode in st["compile"]:
        tsm, w3 = results[f"tsm/{mode}"], results[f"tsm_w3/{mode}"]
        over = w3["median_s"] / tsm["median_s"] - 1
        name = "eager" if mode == "none" else f"compiled ({mode}; compile {tsm['compile_s']:.0f} s / {w3['compile_s']:.0f} s)"
        rows.append((f"TSM+W3 over TSM, step time, {setting}, {name}", "<= +10 %",
                     f"{100 * over:+.1f} % ({tsm['median_s']:.4f} vs {w3['median_s']:.4f} s)", over <= 0.10))
    for arch in ("tsm", "tsm_w3"):
        for mode in d["settings"]["compile"]:
            row = results[f"{arch}/{mode}"]
            if mode != "none" and row.get("vs_eager") is not None:
                rows.append((f"{arch} compiled ({mode}) vs eager, step time", "not slower",
                             f"{100 * row['vs_eager']:+.1f} %", row["vs_eager"] <= 0))
    return rows


def _train(d: dict, images: dict | None) -> list:
    row = next(r for r in d["results"] if r["arch"] == "tsm_w3")
    frames = row["clips_per_s"] * d["setting"]["segments"]
    rows = [("training R50+W3 8x224 bf16 through the real loader: clips/s", ">= 450 clips/s",
             f"{row['clips_per_s']:.1f} clips/s", row["clips_per_s"] >= 450),
            ("training: data wait", "<= 5 %", f"{100 * row['data_wait_frac']:.1f} %", row["data_wait_frac"] <= 0.05)]
    if images:
        share = frames / images["images_per_s"]
        rows.append(("training frames/s vs plain ResNet-50 images/s (same GPU, same run)", ">= 85 %",
                     f"{frames:.0f} vs {images['images_per_s']:.0f} = {100 * share:.0f} %", share >= 0.85))
    return rows


def _mfr(d: dict) -> list:
    s2 = d["stage2"]
    return [("stage 2: optimiser steps with the cache vs the online teacher", ">= 1.3x",
             f"{s2['cache']['clips_per_s']} vs {s2['online']['clips_per_s']} clips/s = {s2['cache_over_online']}x",
             s2["cache_over_online"] >= 1.3),
            ("stage 2 from the cache: data wait", "<= 5 %", f"{100 * s2['cache']['data_wait_frac']:.1f} %",
             s2["cache"]["data_wait_frac"] <= 0.05)]


STEPS: dict[str, Callable] = {"decode": _decode, "loader": _loader, "step": _step, "train": None, "mfr": _mfr}


def report(out: Path, smoke: bool) -> dict:
    status = _status(out)
    rows, failed = [], []
    for name, make in STEPS.items():
        data = _load(out, name)
        rc, seconds = status.get(name, (None, None))
        try:
            made = _train(data, _load(out, "images")) if name == "train" else make(data)
            if data is None or rc not in (0, None):
                raise KeyError
        except (KeyError, TypeError, StopIteration, ZeroDivisionError):
            failed.append(name)
            rows.append((f"{name}: not measured", "-", f"step status {rc} after {seconds} s: see {name}.log", None))
            continue
        rows.extend(made)
    result = {"smoke": smoke, "steps": {k: {"status": v[0], "seconds": v[1]} for k, v in status.items()},
              "rows": [dict(zip(("what", "goal", "measured", "met"), r)) for r in rows], "failed": failed,
              "raw": {name: _load(out, name) for name in (*STEPS, "images")}}
    (out / "gpu_suite.json").write_text(json.dumps(result, indent=1))
    lines = ["| measurement | goal | measured | met |", "|---|---|---|---|"]
    lines += [f"| {w} | {g} | {m} | {'-' if ok is None else ('yes' if ok else '**no**')} |" for w, g, m, ok in rows]
    if smoke:
        lines.insert(0, "Smoke run on a CPU at toy sizes: it checks the suite, the figures mean nothing.\n")
    (out / "gpu_suite.md").write_text("\n".join(lines) + "\n")
    return result


@cli.tool("benchmarks/gpu_report.py")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu_report.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--smoke", type=int, default=0)
    args = parser.parse_args(argv)
    result = report(args.out, bool(args.smoke))
    print((args.out / "gpu_suite.md").read_text())
    return cli.EXIT_FINDINGS if result["failed"] else cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
