"""One-process training on real shards: outputs, checkpoints, export, and exact resume after a kill."""
from __future__ import annotations

import json
import random
import re
import signal

import pytest
import torch

from helpers import losses, read_metrics, run_train, run_until_step_then_signal, tiny, train_data
from pipeline.errors import ResourceError
from train import checkpoint as ckpt_io
from train.export import export
from w3model import build_model

STEPS = 8                     # 2 epochs x 4 steps; checkpoints every 3 steps and at epoch ends


@pytest.fixture(scope="module")
def reference_run(train_shards, tmp_path_factory):
    """One uninterrupted tiny run that several tests inspect and the resume tests compare with."""
    out = tmp_path_factory.mktemp("reference")
    done = run_train(tiny(train_shards, out))
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_one_process_run_writes_everything(reference_run):
    out = reference_run
    rows = read_metrics(out)
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    assert {"step", "epoch", "loss", "lr", "clips_per_s", "data_wait_frac"} <= set(rows[0])
    assert [int(r["epoch"]) for r in rows] == [0] * 4 + [1] * 4
    assert all(float(r["clips_per_s"]) > 0 and 0 <= float(r["data_wait_frac"]) < 1 for r in rows)
    # lr 0.2 per 64 clips x batch 4 = 0.0125, cosine over 8 steps after a 1-epoch (4-step) warm-up
    assert float(rows[0]["lr"]) == pytest.approx(0.0125 / 4) and float(rows[3]["lr"]) == pytest.approx(0.0125)
    assert float(rows[-1]["lr"]) < float(rows[4]["lr"])
    evals = read_metrics(out, "eval.csv")
    assert [int(r["step"]) for r in evals] == [4, 8]
    assert all(float(r["clips"]) == 8 and 0 <= float(r["top1"]) <= float(r["top5"]) == 100.0 for r in evals)
    assert (out / "curves.png").stat().st_size > 10_000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    preds = [json.loads(line) for line in (out / "predictions" / "val_step00000008.jsonl").read_text().splitlines()]
    assert len(preds) == 8 and len({p["key"] for p in preds}) == 8          # every val clip once
    assert all(p["views"] == 1 and len(p["label"]["top"]) == 4 for p in preds)
    top1 = 100.0 * sum(p["label"]["top"][0] == p["label"]["label"] for p in preds) / len(preds)
    assert top1 == pytest.approx(float(evals[-1]["top1"]))


def test_checkpoints_are_complete_rotated_and_best_is_kept(reference_run):
    ckpts = ckpt_io.complete_step_checkpoints(reference_run)
    assert [p.name for p in ckpts] == ["step-00000006", "step-00000008"]    # keep_checkpoints=2
    best = ckpt_io.checkpoints_root(reference_run) / ckpt_io.BEST
    assert ckpt_io.is_complete(best)
    state = ckpt_io.read_trainer_state(best)
    evals = read_metrics(reference_run, "eval.csv")
    assert state["best"]["value"] == max(float(r["top1"]) for r in evals)
    assert not list(ckpt_io.checkpoints_root(reference_run).glob(".tmp-*"))
    final = ckpt_io.read_trainer_state(ckpts[-1])
    assert (final["step"], final["epoch"], final["batches_in_epoch"]) == (8, 2, 0)
    # the TSM parameter groups reached the optimiser, each with its policy's lr and weight decay
    groups = torch.load(ckpts[-1] / "optimizer.bin", weights_only=True)["param_groups"]
    names = {g["name"]: g for g in groups}
    assert {"normal_weight", "bn", "lr5_weight", "lr10_bias"} <= set(names)
    assert names["normal_weight"]["lr"] > 0
    assert names["lr5_weight"]["lr"] == pytest.approx(5 * names["normal_weight"]["lr"])
    assert names["bn"]["weight_decay"] == 0.0


def test_export_loads_into_build_model_and_reproduces_predictions(reference_run, train_shards, tmp_path):
    out, kwargs = export(reference_run / "checkpoints" / "step-00000008", tmp_path / "model.pt")
    state = torch.load(out, weights_only=True)
    model = build_model(**kwargs)
    model.load_state_dict(state, strict=True)
    assert json.loads(out.with_suffix(".json").read_text())["build_model"] == kwargs
    from pipeline.loader import build_loader
    loader = build_loader(train_shards / "sthv2", split="val", mode="val", batch_size=4, num_segments=2,
                          crop_size=32, scale_size=40, seed=0, num_threads=1)
    model.eval()
    preds = {json.loads(line)["key"]: json.loads(line)["label"]
             for line in (reference_run / "predictions" / "val_step00000008.jsonl").read_text().splitlines()}
    with torch.no_grad():
        for batch in loader:
            probs = torch.softmax(model(batch["frames"])["logits"]["label"], dim=1)
            for key, p, valid in zip(batch["keys"], probs, batch["valid"]):
                if valid:
                    assert torch.argmax(p).item() == preds[key]["top"][0]
                    assert p.max().item() == pytest.approx(preds[key]["scores"][0], abs=1e-5)


@pytest.mark.slow
def test_kill_at_a_random_step_and_resume_gives_the_same_losses(reference_run, train_shards, tmp_path):
    """SIGUSR1 (SLURM's pre-emption warning) at a random step -> checkpoint, PREEMPTED, exit 75;
    `--resume auto` then continues to the same bit-exact loss sequence and evaluation."""
    step = random.Random().randint(1, STEPS - 3)
    args = tiny(train_shards, tmp_path)
    status, output = run_until_step_then_signal(args, tmp_path, step, signal.SIGUSR1)
    assert status == 75, output
    marker = json.loads((tmp_path / "PREEMPTED").read_text())
    assert marker["signal"] == "SIGUSR1" and marker["step"] >= step
    assert ckpt_io.is_complete(ckpt_io.checkpoints_root(tmp_path) / ckpt_io.step_name(marker["step"]))
    # a newer half-written checkpoint (no marker) must never be resumed from
    (ckpt_io.checkpoints_root(tmp_path) / ckpt_io.step_name(99)).mkdir()
    done = run_train(args + ["--resume", "auto"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed from" in done.stdout and ckpt_io.step_name(marker["step"]) in done.stdout
    assert not (tmp_path / "PREEMPTED").exists()
    assert losses(tmp_path) == losses(reference_run), f"pre-empted at step {marker['step']} (asked {step})"
    assert read_metrics(tmp_path, "eval.csv")[-1]["top1"] == read_metrics(reference_run, "eval.csv")[-1]["top1"]


@pytest.mark.slow
def test_hard_kill_resumes_from_the_last_complete_checkpoint(reference_run, train_shards, tmp_path):
    """SIGKILL leaves no pre-emption checkpoint: the run resumes from its last periodic one, exactly."""
    args = tiny(train_shards, tmp_path)
    status, output = run_until_step_then_signal(args, tmp_path, 5, signal.SIGKILL)
    assert status == -signal.SIGKILL, output
    last = ckpt_io.resolve_resume("auto", tmp_path)
    assert last is not None and ckpt_io.read_trainer_state(last)["step"] in (3, 4, 6)
    done = run_train(args + ["--resume", "auto"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert losses(tmp_path) == losses(reference_run)


def test_resume_refuses_an_incomplete_checkpoint(reference_run, tmp_path):
    partial = tmp_path / "step-00000004"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"")
    with pytest.raises(ResourceError, match="no COMPLETE marker"):
        ckpt_io.resolve_resume(str(partial), tmp_path)
    assert ckpt_io.resolve_resume("auto", tmp_path / "fresh") is None
    assert ckpt_io.resolve_resume(str(reference_run), tmp_path).name == "step-00000008"


def test_eval_only_runs_the_multiview_test_protocol_on_the_best_checkpoint(reference_run, train_shards):
    from pipeline.plan import views_per_clip
    before = (reference_run / "metrics.csv").read_text()
    done = run_train(tiny(train_shards, reference_run, "eval.mode=test") + ["--eval-only"])
    assert done.returncode == 0, done.stdout + done.stderr
    best = ckpt_io.checkpoints_root(reference_run) / ckpt_io.BEST
    assert f"{best} on val (test protocol)" in done.stdout
    step = ckpt_io.read_trainer_state(best)["step"]
    preds = (reference_run / "predictions" / f"val_multiview_step{step:08d}.jsonl").read_text().splitlines()
    assert len(preds) == 8 and all(json.loads(p)["views"] == views_per_clip("test") > 1 for p in preds)
    assert (reference_run / "metrics.csv").read_text() == before          # evaluation alone changes no log


def test_epic_run_scores_verb_noun_action_and_writes_the_submission(tmp_path_factory):
    root = tmp_path_factory.mktemp("epic")
    shards = train_data(root, "epic100")
    out = root / "run"
    # epic.yaml: action_top1, submission (ImageNet weights of ResNet-50; the tiny ResNet-18 starts from scratch)
    done = run_train(tiny(shards, out, "train.epochs=1", "model.pretrained=null", cfg="epic"))
    assert done.returncode == 0, done.stdout + done.stderr
    evals = read_metrics(out, "eval.csv")
    assert {"verb_top1", "verb_top5", "noun_top1", "noun_top5", "action_top1", "action_top5"} <= set(evals[-1])
    state = ckpt_io.read_trainer_state(ckpt_io.checkpoints_root(out) / ckpt_io.BEST)
    assert state["best"]["metric"] == "action_top1" and set(state["heads"]) == {"verb", "noun"}
    sub = json.loads(next((out / "predictions").glob("val_step*_epic_submission.json")).read_text())
    manifest = json.loads((shards / "epic100" / "manifest.json").read_text())
    assert len(sub["results"]) == manifest["splits"]["val"]["num_samples"]
    assert all(re.fullmatch(r"P\d\d_\d+_\d+", key) for key in sub["results"])     # EPIC-100 narration ids
    segment = next(iter(sub["results"].values()))
    assert len(segment["verb"]) == manifest["heads"]["verb"] and len(segment["noun"]) == manifest["heads"]["noun"]
    assert all("," in pair for pair in segment["action"])


def test_gradient_accumulation_counts_optimiser_steps(train_shards, tmp_path):
    """grad_accum=2: 4 batches per epoch make 2 optimiser steps, and the lr scales with the 8-clip global batch."""
    done = run_train(tiny(train_shards, tmp_path, "train.grad_accum=2", "train.epochs=1", "eval.final=false",
                          "eval.every_epochs=0",
                          "optim.warmup_epochs=0.0", "optim.schedule=steps"))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = read_metrics(tmp_path)
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(float(r["lr"]) == pytest.approx(0.2 * 8 / 64) for r in rows)
    assert "global batch 8" in done.stdout and not (tmp_path / "eval.csv").exists()
    # the one epoch was read whole: 4 micro-batches, 2 optimiser steps (before: every micro-batch stepped,
    # so the 2 steps ended the run half-way through the epoch)
    state = ckpt_io.read_trainer_state(ckpt_io.complete_step_checkpoints(tmp_path)[-1])
    assert (state["step"], state["epoch"], state["batches_in_epoch"]) == (2, 1, 0)
