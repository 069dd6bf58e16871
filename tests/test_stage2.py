"""Stage 2 (MFR): the student trains on cross-entropy + L_fm with the teacher's features from the cache,
never opening the teacher; the online teacher gives the same loss up to the quantisation; damaged records
are raised or dropped and counted; evaluation needs no training split."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from helpers import cache_cmd, read_metrics, run_tool, run_train, stage2_sets, tiny
from pipeline.synth import synthesize_and_shard
from train.teacher_cache import open_cache

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RUN = ("train.objective=mfr", "train.epochs=1", "train.log_every=1", "eval.every_epochs=0", "train.ckpt_every=0")


@pytest.fixture(scope="module")
def cached(cache_shards, teacher_run, tmp_path_factory):
    """(shards, teacher, cache): a cache built from a copy of the teacher's run, which is then deleted."""
    root = tmp_path_factory.mktemp("stage2")
    teacher = root / "teacher"
    shutil.copytree(teacher_run, teacher)
    cache = root / "cache"
    done = run_tool(cache_cmd("build", *stage2_sets(cache_shards, teacher, cache)))
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.rmtree(teacher)
    return cache_shards, teacher, cache


def test_the_student_trains_from_the_cache_with_the_teacher_deleted(cached, tmp_path):
    shards, teacher, cache = cached
    assert not teacher.exists()
    out = tmp_path / "student"
    done = run_train(stage2_sets(shards, teacher, cache, *RUN, f"out_dir={out}", "eval.final=true"))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = read_metrics(out)
    assert len(rows) == 4 and all(float(r["fm"]) > 0 for r in rows)
    assert all(float(r["loss"]) == pytest.approx(float(r["ce"]) + float(r["fm"]), rel=1e-5) for r in rows)
    assert (out / "eval.csv").is_file()


def test_the_online_teacher_gives_the_cache_loss_up_to_quantisation(cached, teacher_run, tmp_path):
    """Same seed, same first batch, same student: L_fm at step 1 from the cache and from running the
    teacher differ only by the 8-bit storage."""
    shards, _, cache = cached
    losses = {}
    for source in ("cache", "online"):
        out = tmp_path / source
        done = run_train(stage2_sets(shards, teacher_run, cache, *RUN, f"out_dir={out}", f"mfr.source={source}",
                                     "train.max_steps=1", "eval.final=false"))
        assert done.returncode == 0, done.stdout + done.stderr
        losses[source] = float(read_metrics(out)[0]["fm"])
    assert losses["cache"] == pytest.approx(losses["online"], rel=0.02)


def test_a_damaged_record_is_raised_or_its_term_dropped_and_counted(cached, tmp_path):
    shards, teacher, cache = cached
    damaged = tmp_path / "cache"
    shutil.copytree(cache, damaged)
    store = open_cache(damaged)
    part = store.parts[0]
    feat = damaged / "parts" / f"{part.name}.feat"
    with open(feat, "r+b") as fh:                      # clip 0 of the part: every view
        for view in range(store.views):
            fh.seek(view * store.layout.record_bytes + 100)
            fh.write(b"\xff\xff")
    key = json.loads((damaged / "parts" / f"{part.name}.json").read_text())["keys"][0]
    done = run_train(stage2_sets(shards, teacher, damaged, *RUN, f"out_dir={tmp_path / 'raise'}"))
    assert done.returncode == 2 and f"key {key} view" in done.stderr and part.name in done.stderr
    out = tmp_path / "skip"
    done = run_train(stage2_sets(shards, teacher, damaged, *RUN, f"out_dir={out}", "data.bad_sample=skip"))
    assert done.returncode == 0, done.stdout + done.stderr
    dropped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert dropped and all(d["key"].startswith(f"{key} view") and "MFR term dropped" in d["reason"] for d in dropped)
    assert int(read_metrics(out)[-1]["skipped"]) == len(dropped)


def test_stage2_under_two_process_deepspeed_zero2_bf16(cached, tmp_path):
    shards, teacher, cache = cached
    out = tmp_path / "zero2"
    launcher = ["--config_file", "launch/accelerate/zero2.yaml", "--num_processes", "2", "--main_process_port",
                "29641"]
    done = run_train(stage2_sets(shards, teacher, cache, *RUN, f"out_dir={out}", "train.precision=bf16",
                                 "train.batch_size=2", "train.max_steps=3"), launcher=launcher)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = read_metrics(out)
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and all(float(r["fm"]) > 0 for r in rows)


def test_evaluation_needs_no_training_split(teacher_run, tmp_path):
    """--eval-only used to build the training loader first and failed on shards without a train split."""
    shards = synthesize_and_shard("sthv2", tmp_path / "data", codec="vp9", splits="val", classes=4,
                                  clips_per_class=8, num_frames=16, width=64, height=48).parent
    args = tiny(shards, tmp_path / "eval", "model.depth=18", "data.num_segments=2", "data.crop_size=64",
                "data.scale_size=64", "model.dropout=0.5")
    done = run_train(args + ["--eval-only", "--resume", str(teacher_run)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "top1" in done.stdout and (tmp_path / "eval" / "predictions").is_dir()


def test_stage2_settings_are_checked_at_load():
    done = subprocess.run([sys.executable, "train/run.py", "--cfg", "launch/smoke.yaml", "--set",
                           "train.objective=mfr"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "mfr.cache" in done.stderr and "data.train_views" in done.stderr
