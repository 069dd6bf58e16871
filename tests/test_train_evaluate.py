"""Evaluation arithmetic: padding dropped, views averaged by key, top-k per head, EPIC action pairs and
the challenge's submission JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from pipeline.errors import DataError
from train.evaluate import aggregate_views, collect_scores, score_clips, write_epic_submission, write_predictions
from w3model import build_model


def row(key, view, labels, **logits):
    return {"key": key, "view": view, "labels": labels, "logits": {h: np.asarray(s, float) for h, s in logits.items()}}


def test_views_of_a_clip_are_averaged_by_key():
    rows = [row("a", 0, {"label": 1}, label=[2.0, 1.0, 0.0]), row("b", 0, {"label": 2}, label=[0.0, 1.0, 3.0]),
            row("a", 1, {"label": 1}, label=[0.0, 4.0, 0.0])]
    clips = aggregate_views(rows)
    assert list(clips) == ["a", "b"] and clips["a"]["views"] == 2
    mean = np.array([1.0, 2.5, 0.0])
    np.testing.assert_allclose(clips["a"]["scores"]["label"], np.exp(mean) / np.exp(mean).sum())
    # view 0 alone would get clip a wrong; the average gets both right
    assert score_clips(clips, {"label": 3})["top1"] == 100.0
    assert score_clips(aggregate_views(rows[:2]), {"label": 3})["top1"] == 50.0
    with pytest.raises(DataError, match="'a' view 0 twice"):
        aggregate_views(rows + [rows[0]])


def test_views_are_averaged_before_the_softmax_as_tsm_does():
    """One confident view for class 1 against two mild ones for class 0: mean probabilities would pick
    class 0 (0.59 vs 0.41), TSM's mean logits (1.33 vs 3.33) pick class 1."""
    views = [[0.0, 10.0], [2.0, 0.0], [2.0, 0.0]]
    clips = aggregate_views([row("a", v, {"label": 1}, label=logits) for v, logits in enumerate(views)])
    probs = np.exp(views) / np.exp(views).sum(axis=1, keepdims=True)
    assert probs.mean(axis=0).argmax() == 0
    assert clips["a"]["scores"]["label"].argmax() == 1
    assert score_clips(clips, {"label": 2})["top1"] == 100.0


def test_topk_and_unlabelled_clips():
    scores = np.eye(6)[[0, 1, 2, 3]] + np.linspace(0, 0.5, 6)      # clip i ranks class i first, then 5, 4, ...
    clips = {f"k{i}": {"scores": {"label": scores[i]}, "labels": {"label": lab}, "views": 1}
             for i, lab in enumerate([0, 5, 0, -1])}
    metrics = score_clips(clips, {"label": 6})
    assert metrics["top1"] == pytest.approx(100 / 3)                  # k0 right; k1, k2 wrong; k3 unlabelled
    assert metrics["top5"] == pytest.approx(200 / 3)                  # k1's 5 is in its top 5, k2's 0 is not
    assert metrics["clips"] == 4


def test_epic_verb_noun_action():
    verb = [[0.7, 0.3], [0.4, 0.6]]
    noun = [[0.1, 0.5, 0.4], [0.2, 0.2, 0.6]]
    clips = {f"P01_101_{i}": {"scores": {"verb": np.array(verb[i]), "noun": np.array(noun[i])},
                              "labels": {"verb": v, "noun": n}, "views": 1}
             for i, (v, n) in enumerate([(0, 2), (1, 2)])}
    metrics = score_clips(clips, {"verb": 2, "noun": 3})
    assert metrics["verb_top1"] == 100.0 and metrics["noun_top1"] == 50.0
    assert metrics["action_top1"] == 50.0                  # clip 0's best pair is (0, 1), label (0, 2)
    assert metrics["action_top5"] == 100.0


def test_epic_submission_format(tmp_path):
    clips = {"P01_101_0": {"scores": {"verb": np.array([0.7, 0.3]), "noun": np.array([0.1, 0.5, 0.4])},
                           "labels": {"verb": -1, "noun": -1}, "views": 2}}
    sub = json.loads(write_epic_submission(clips, tmp_path / "sub.json", top_actions=3).read_text())
    assert (sub["version"], sub["challenge"]) == ("0.2", "action_recognition")
    assert {"sls_pt", "sls_tl", "sls_td"} <= set(sub)
    result = sub["results"]["P01_101_0"]
    assert result["verb"] == {"0": 0.7, "1": 0.3} and set(result["noun"]) == {"0", "1", "2"}
    assert list(result["action"]) == ["0,1", "0,2", "1,1"]
    assert result["action"]["0,1"] == pytest.approx(0.35)
    lines = write_predictions(clips, tmp_path / "p.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["verb"] == {"label": -1, "top": [0, 1], "scores": [0.7, 0.3]}


def test_padding_samples_are_dropped():
    model = build_model(arch="tsm", depth=18, num_segments=2, heads={"label": 3}, dropout=0.0)
    torch.manual_seed(0)
    batches = [{"frames": torch.randn(2, 2, 3, 32, 32), "labels": {"label": torch.tensor([0, 1])},
                "keys": [f"k{2 * i}", f"k{2 * i + 1}"], "view_ids": torch.zeros(2, dtype=torch.int64),
                "valid": torch.tensor([True, i == 0])} for i in range(2)]
    rows = collect_scores(model, batches, Accelerator(cpu=True))
    assert [r["key"] for r in rows] == ["k0", "k1", "k2"]
    with torch.no_grad():
        model.eval()
        expected = model(batches[0]["frames"])["logits"]["label"][0].numpy()
        model.train()
    np.testing.assert_allclose(rows[0]["logits"]["label"], expected, rtol=1e-5, atol=1e-6)
    assert model.training                                            # restored after evaluation
