"""The run log says how many training samples were skipped and lists them: metrics.csv's `skipped` column,
skipped.jsonl in out_dir, both cut back to the resumed step on resume."""
from __future__ import annotations

import json

import pytest

from helpers import copy_shards, read_metrics, rewrite_sample, run_train, tiny
from pipeline.shard_set import ShardSet
from train.run_log import SKIPPED, RunLog


def _skip_rows(out_dir):
    return [json.loads(line) for line in (out_dir / SKIPPED).read_text().splitlines()]


@pytest.mark.slow
def test_skipped_training_samples_are_counted_and_listed(train_shards, tmp_path):
    shards = copy_shards(train_shards / "sthv2", tmp_path / "shards" / "sthv2")
    key = rewrite_sample(shards, "train", 0, 0, meta=lambda m: {**m, "num_frames": 2 * m["num_frames"]})
    out = tmp_path / "run"
    done = run_train(tiny(tmp_path / "shards", out, "data.bad_sample=skip", "train.epochs=2",
                          "eval.every_epochs=0", "eval.final=false"))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = read_metrics(out)
    counts = [int(r["skipped"]) for r in rows]
    assert counts == sorted(counts) and counts[-1] == 2        # the clip is replaced once in each epoch
    skips = _skip_rows(out)
    assert [(s["epoch"], s["key"], s["rank"]) for s in skips] == [(0, key, 0), (1, key, 0)]
    assert all(s["reason"].startswith("cannot decode:") and s["shard"] == str(ShardSet(shards, "train").files[0].path)
               for s in skips)
    assert "bad training sample(s) skipped" in done.stdout and str(out / SKIPPED) in done.stdout
    assert [int(rows[s["step"] - 1]["skipped"]) for s in skips] == [1, 2]   # counted at the step it was logged


def test_resume_keeps_the_skips_up_to_the_resumed_step(tmp_path):
    log = RunLog(tmp_path, enabled=False)
    log.skips(1, [{"rank": 0, "key": "a"}])                  # not the main process: writes nothing
    assert not (tmp_path / SKIPPED).exists()
    log = RunLog(tmp_path, enabled=True)
    log.skips(2, [{"rank": 0, "key": "a"}])
    log.skips(5, [{"rank": 1, "key": "b"}, {"rank": 0, "key": "c"}])
    log.train_step(step=5, epoch=0, loss=1.0, lr=0.1, clips_per_s=1.0, data_wait_frac=0.0)
    log.close()
    assert read_metrics(tmp_path)[-1]["skipped"] == "3"
    resumed = RunLog(tmp_path, enabled=True, resume_step=4)
    assert resumed.skipped_total == 1 and [s["key"] for s in _skip_rows(tmp_path)] == ["a"]
    resumed.train_step(step=5, epoch=0, loss=1.0, lr=0.1, clips_per_s=1.0, data_wait_frac=0.0)
    resumed.close()
    assert read_metrics(tmp_path)[-1]["skipped"] == "1"
    RunLog(tmp_path, enabled=True).close()                    # a fresh start forgets them
    assert not (tmp_path / SKIPPED).exists()
