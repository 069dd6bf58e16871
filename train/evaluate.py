"""Evaluation: every clip counted once, views averaged per clip, top-k per head (EPIC: verb, noun, action).

Each rank runs its equal share of the loader's batches (ZeRO-3 needs every rank in every forward), drops
the padding samples (`batch["valid"]`), and the main process gathers the logits, averages the views of a
clip (the multi-view test protocol) by key, and scores them. As in TSM's test script (test_models.py:
`rst.reshape(batch_size, num_crop, -1).mean(1)`, softmax only afterwards), the views' logits are
averaged before the softmax, not their probabilities; the two can rank classes differently.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from pipeline.errors import DataError

TOPK = (1, 5)
EPIC_HEADS = ("verb", "noun")


@torch.no_grad()
def collect_scores(model: torch.nn.Module, loader, accelerator: Accelerator) -> list[dict]:
    """Per valid sample on this rank: key, view id, per-head logits and labels; gathered to all."""
    was_training = model.training
    model.eval()
    rows: list[dict] = []
    for batch in loader:
        with accelerator.autocast():
            logits = model(batch["frames"])["logits"]
        valid = batch["valid"].cpu().numpy().astype(bool)
        logits = {h: v.float().cpu().numpy() for h, v in logits.items()}
        labels = {h: v.cpu().numpy() for h, v in batch["labels"].items()}
        view_ids = batch["view_ids"].cpu().numpy()
        for i in np.flatnonzero(valid):
            rows.append({"key": batch["keys"][i], "view": int(view_ids[i]),
                         "logits": {h: v[i] for h, v in logits.items()},
                         "labels": {h: int(labels[h][i]) for h in logits if h in labels}})
    model.train(was_training)
    if accelerator.num_processes > 1:
        rows = gather_object(rows)
    return rows


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def aggregate_views(rows: list[dict]) -> dict[str, dict]:
    """key -> scores (softmax of the mean of its views' logits), its labels, and how many views were
    averaged."""
    by_key: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_key[row["key"]].append(row)
    clips = {}
    for key, views in sorted(by_key.items()):
        seen = {v["view"] for v in views}
        if len(seen) != len(views):
            dup = sorted(v["view"] for v in views)
            dup = next(a for a, b in zip(dup, dup[1:]) if a == b)
            raise DataError(f"evaluation saw clip {key!r} view {dup} twice: duplicate keys in the shards, or "
                            f"ranks that overlap")
        clips[key] = {"scores": {h: softmax(np.mean([v["logits"][h] for v in views], axis=0))
                                 for h in views[0]["logits"]},
                      "labels": views[0]["labels"], "views": len(views)}
    return clips


def _topk_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (top == labels[:, None]).any(axis=1)


def action_scores(verb: np.ndarray, noun: np.ndarray) -> np.ndarray:
    """EPIC action = (verb, noun) pair, scored as the product of the two heads' probabilities."""
    return (verb[:, :, None] * noun[:, None, :]).reshape(len(verb), -1)


def _metric(head: str, k: int, multi: bool) -> str:
    return f"{head}_top{k}" if multi else f"top{k}"


def metric_names(heads: dict[str, int]) -> list[str]:
    """The accuracies `score_clips` reports for these heads (what eval.best_metric may name)."""
    multi = len(heads) > 1
    names = [_metric(h, k, multi) for h in heads for k in TOPK]
    if all(h in heads for h in EPIC_HEADS):
        names += [_metric("action", k, True) for k in TOPK]
    return names


def score_clips(clips: dict[str, dict], heads: dict[str, int]) -> dict[str, float]:
    """Top-1/top-5 accuracy in % per head (EPIC: verb_*, noun_*, action_*); labelled clips only."""
    metrics: dict[str, float] = {"clips": float(len(clips))}
    keys = list(clips)
    multi = len(heads) > 1
    labels = {h: np.array([clips[c]["labels"].get(h, -1) for c in keys]) for h in heads}
    scores = {h: np.stack([clips[c]["scores"][h] for c in keys]) for h in heads} if keys else {}
    for head in heads:
        has = labels[head] >= 0
        if not keys or not has.any():
            continue
        for k in TOPK:
            metrics[_metric(head, k, multi)] = 100.0 * float(_topk_hits(scores[head][has], labels[head][has], k).mean())
    if all(h in heads for h in EPIC_HEADS) and keys:
        has = (labels["verb"] >= 0) & (labels["noun"] >= 0)
        if has.any():
            pair = labels["verb"][has] * heads["noun"] + labels["noun"][has]
            act = action_scores(scores["verb"][has], scores["noun"][has])
            for k in TOPK:
                metrics[_metric("action", k, True)] = 100.0 * float(_topk_hits(act, pair, k).mean())
    return metrics


def write_predictions(clips: dict[str, dict], path: Path, top: int = 5) -> Path:
    """One JSON line per clip: key, views averaged, and per head the label and the top classes/scores."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for key, clip in clips.items():
            line = {"key": key, "views": clip["views"]}
            for head, score in clip["scores"].items():
                order = np.argsort(-score, kind="stable")[:top]
                line[head] = {"label": clip["labels"].get(head, -1), "top": order.tolist(),
                              "scores": [round(float(score[i]), 6) for i in order]}
            fh.write(json.dumps(line) + "\n")
    return path


def write_epic_submission(clips: dict[str, dict], path: Path, *, top_actions: int = 100,
                          sls: tuple[int, int, int] = (0, 0, 0)) -> Path:
    """The EPIC-Kitchens-100 action recognition challenge JSON (version 0.2): per segment all verb and
    noun scores and the top `top_actions` "verb,noun" action scores. Results are keyed by the shard key,
    which for EPIC is the owners' segment id (narration_id / uid; pipeline/datasets/epic*.py keep it as
    the key). `sls`: the self-declared pretraining / training-labels / training-data levels the
    challenge asks for."""
    results = {}
    for key, clip in clips.items():
        verb, noun = clip["scores"]["verb"], clip["scores"]["noun"]
        act = action_scores(verb[None], noun[None])[0]
        best = np.argsort(-act, kind="stable")[:top_actions]
        results[key] = {
            "verb": {str(i): float(s) for i, s in enumerate(verb)},
            "noun": {str(i): float(s) for i, s in enumerate(noun)},
            "action": {f"{i // len(noun)},{i % len(noun)}": float(act[i]) for i in best},
        }
    submission = {"version": "0.2", "challenge": "action_recognition",
                  "sls_pt": sls[0], "sls_tl": sls[1], "sls_td": sls[2], "results": results}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(submission))
    return path
