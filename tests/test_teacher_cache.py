"""The teacher-feature cache (train/teacher_cache.py): records that replay the loader's views exactly,
builds that resume byte-identically and share work, identities that refuse other settings, and damage
caught by verify and by every read."""
from __future__ import annotations

import filecmp
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REPO, cache_cmd, run_env, run_tool, run_train, stage2_overrides, stage2_sets
from pipeline.errors import ConfigError, DataError
from pipeline.loader import build_loader
from pipeline.plan import PlanItem, bank_view
from train.cache_build import Teacher, feature_shape, manifest_sha256, view_identity
from train.config import load_config, shards_dir
from train.feature_store import RecordLayout, decode_record, dequantize, encode_record, quantize
from train.teacher_cache import open_cache, verify

pytestmark = pytest.mark.timeout(600)


def build(shards: Path, teacher: Path, cache: Path, *extra: str, check: bool = True):
    done = run_tool(cache_cmd("build", *stage2_sets(shards, teacher, cache, *extra)))
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def built(cache_shards, teacher_run, tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("cache") / "c"
    build(cache_shards, teacher_run, cache)
    return cache


def test_quantised_records_round_trip_within_one_percent():
    torch.manual_seed(0)
    # post-ReLU features with per-channel scales spread over two orders of magnitude, as trained nets have
    y = torch.relu(torch.randn(3, 8, 64, 7, 7)) * torch.logspace(-2, 0, 64)[None, None, :, None, None]
    values, scales = quantize(y, "uint8")
    back = dequantize(torch.from_numpy(values), torch.from_numpy(scales))
    assert ((back - y).norm() / y.norm()).item() < 0.01
    layout = RecordLayout((8, 64, 7, 7))
    record = encode_record("k", 1, values[0], scales[0], layout)
    assert len(record) == layout.record_bytes and layout.record_bytes % 64 == 0
    got = decode_record(record, "k", 1, layout, "here")
    assert np.array_equal(got[0], values[0]) and np.array_equal(got[1], scales[0])
    with pytest.raises(DataError, match="another clip or view"):
        decode_record(record, "k", 0, layout, "here")
    half, _ = quantize(y, "float16")
    assert half.dtype == np.float16
    assert RecordLayout((8, 2048, 7, 7)).record_bytes <= 0.80 * 2**20      # R50 8x224: <= 0.80 MiB per view
    with pytest.raises(DataError, match="negative"):
        quantize(-y, "uint8")


def test_the_cache_replays_the_loaders_views(built, cache_shards, teacher_run):
    """For sampled (key, view): the cached features equal a fresh teacher forward on the loader's frames of
    that view, within the quantisation error; verify and info agree."""
    cfg = load_config(REPO / "launch" / "smoke.yaml", stage2_overrides(cache_shards, teacher_run, built))
    cache = open_cache(built)
    assert cache.complete and len(cache.parts) == 4 and cache.views == 2
    teacher = Teacher(teacher_run, torch.device("cpu"))
    assert cache.identity["teacher_sha256"] == teacher.sha256
    loader = build_loader(shards_dir(cfg), cfg.loaders["cache"])
    items = [PlanItem(shard, index, view, True) for shard, index, view in ((0, 0, 0), (1, 2, 1), (3, 3, 1), (2, 1, 0))]
    batch = next(iter(loader.replay(items)))
    with torch.no_grad():
        fresh = teacher.model(batch["frames"])["features"]
    cached = cache.read(batch["keys"], batch["view_ids"].tolist())
    assert cached.shape == fresh.shape == (4, *cache.layout.shape)
    assert ((cached - fresh).norm() / fresh.norm()).item() < 0.01
    assert not torch.equal(cached[0], cache.read([batch["keys"][0]], [1])[0])        # views differ
    assert verify(built) == []
    info = run_tool(cache_cmd("info", str(built), "--json"))
    summary = json.loads(info.stdout)
    assert summary["complete"] and summary["records"] == 16 * 2 and summary["dtype"] == "uint8"


def test_a_flipped_byte_is_caught_by_verify_and_by_a_read(built, tmp_path):
    damaged = tmp_path / "c"
    subprocess.run(["cp", "-r", str(built), str(damaged)], check=True)
    cache = open_cache(damaged)
    part = cache.parts[2]
    feat = damaged / "parts" / f"{part.name}.feat"
    keys = json.loads((damaged / "parts" / f"{part.name}.json").read_text())["keys"]
    record = 1 * cache.views + 1                                   # clip 1, view 1
    with open(feat, "r+b") as fh:
        fh.seek(record * cache.layout.record_bytes + 500)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(DataError, match=rf"{part.name}\.feat record {record}.*key {keys[1]} view 1.*damaged"):
        cache.read([keys[1]], [1])
    cache.read([keys[1]], [0])                                     # its neighbour is fine
    done = run_tool(cache_cmd("verify", str(damaged)))
    assert done.returncode == 1 and f"key {keys[1]} view 1" in done.stdout.splitlines()[0] + done.stdout
    assert f"{part.name}.feat" in done.stdout.splitlines()[0]


def test_two_readers_at_once_read_the_same(built):
    cache = open_cache(built)
    keys = [k for k in cache._where][:8]
    expected = cache.read(keys, [1] * len(keys))
    results = []

    def reader():
        mine = open_cache(built)
        results.append(all(torch.equal(mine.read(keys, [1] * len(keys)), expected) for _ in range(20)))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    procs = [subprocess.Popen(cache_cmd("verify", str(built)), cwd=REPO, env=run_env(), stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    assert results == [True, True] and all(p.wait(timeout=120) == 0 for p in procs)


@pytest.mark.slow
def test_kill_9_during_a_build_then_rerun_is_byte_identical(cache_shards, teacher_run, built, tmp_path):
    cache = tmp_path / "c"
    proc = subprocess.Popen(cache_cmd("build", *stage2_sets(cache_shards, teacher_run, cache)), cwd=REPO,
                            env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((cache / "parts").glob("*.json")) and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list((cache / "parts").glob("*.json")))
    assert 1 <= done_before, "the build was not under way when it was killed"
    build(cache_shards, teacher_run, cache)
    assert not list((cache / "parts").glob(".*.tmp*")), "a killed build's temporary file was left"
    names = sorted(p.name for p in (built / "parts").iterdir() if not p.name.startswith("."))
    assert names == sorted(p.name for p in (cache / "parts").iterdir() if not p.name.startswith("."))
    for name in [*(f"parts/{n}" for n in names), "cache.json"]:
        assert filecmp.cmp(built / name, cache / name, shallow=False), name


@pytest.mark.slow
def test_two_builds_on_one_folder_share_the_parts(cache_shards, teacher_run, built, tmp_path):
    """Two jobs started on one cache folder: every part built once, by one of them; the result is the
    single build's, byte for byte. Which job builds how many is timing: under load one job can find every
    part taken or done by the time it starts (it then builds none), so only "once, by one" is asserted."""
    cache = tmp_path / "c"
    procs = [subprocess.Popen(cache_cmd("build", *stage2_sets(cache_shards, teacher_run, cache)), cwd=REPO,
                              env={**run_env(), "RANK": str(r), "WORLD_SIZE": "2"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    built_by = [{line.split()[-1] for line in out.splitlines() if line.startswith("built part")} for out in outputs]
    assert not built_by[0] & built_by[1]
    assert built_by[0] | built_by[1] == {p.name for p in open_cache(cache).parts}
    for name in (p.name for p in (built / "parts").iterdir() if not p.name.startswith(".")):
        assert filecmp.cmp(built / "parts" / name, cache / "parts" / name, shallow=False), name


@pytest.mark.slow
def test_a_two_process_build_under_accelerate_launch(cache_shards, teacher_run, built, tmp_path):
    """`accelerate launch` with 2 processes (CPU, gloo): both build, each its own parts, one cache."""
    cache = tmp_path / "c"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "launch/accelerate/ddp.yaml",
           "--num_processes", "2", "--main_process_port", "29651", "train/teacher_cache.py", "build",
           *stage2_sets(cache_shards, teacher_run, cache)]
    done = run_tool(cmd, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rank 0: wrote" in done.stdout and "rank 1: wrote" in done.stdout
    for name in (p.name for p in (built / "parts").iterdir() if not p.name.startswith(".")):
        assert filecmp.cmp(built / "parts" / name, cache / "parts" / name, shallow=False), name


def _identity(changes: list[str], shards: Path, teacher_run: Path, cache: Path) -> dict:
    """The identity a run with these settings wants (what stage 2 checks a cache against)."""
    cfg = load_config(REPO / "launch" / "smoke.yaml", stage2_overrides(shards, teacher_run, cache, *changes))
    loader = build_loader(shards_dir(cfg), cfg.loaders["train"])
    teacher = Teacher(teacher_run, torch.device("cpu"))
    return {"teacher_sha256": teacher.sha256,
            **view_identity(loader.settings, loader.settings.flip, manifest_sha256(shards_dir(cfg)),
                            feature_shape(teacher.config, loader.settings.crop_size), cfg["mfr"]["cache_dtype"])}


@pytest.mark.parametrize("change, field", [
    (["seed=1"], "seed"), (["data.crop_size=56"], "crop_size"), (["data.scale_size=72"], "scale_size"),
    (["data.train_views=3"], "train_views"), (["mfr.cache_dtype=float16"], "dtype"),
])
def test_every_identity_field_is_refused_with_both_values(built, cache_shards, teacher_run, change, field):
    cache = open_cache(built)
    cache.check_identity(_identity([], cache_shards, teacher_run, built), "same")
    wanted = _identity(change, cache_shards, teacher_run, built)
    with pytest.raises(ConfigError) as err:
        cache.check_identity(wanted, "exp.yaml")
    message = str(err.value)
    assert f"{field}: cache has {cache.identity[field]!r}, this run has {wanted[field]!r}" in message


def test_other_shards_flip_plan_version_or_teacher_are_refused(built, cache_shards, teacher_run, train_shards,
                                                                tmp_path, monkeypatch):
    cache = open_cache(built)
    same = _identity([], cache_shards, teacher_run, built)
    for field, value in (("manifest_sha256", manifest_sha256(shards_dir(load_config(
            None, [f"data.shards={train_shards}"])))), ("flip", True), ("plan_version", 2),
            ("teacher_sha256", "0" * 64)):
        with pytest.raises(ConfigError, match=rf"{field}: cache has"):
            cache.check_identity({**same, field: value}, "exp.yaml")
    # a build resumed with another teacher is refused too (its identity differs)
    other = tmp_path / "other_teacher"
    subprocess.run(["cp", "-r", str(teacher_run), str(other)], check=True)
    done = build(cache_shards, other, built, "seed=5", check=False)
    assert done.returncode == 2 and "seed: cache has 0, this run has 5" in done.stderr


def test_a_missing_or_incomplete_cache_names_the_build_command(built, cache_shards, teacher_run, tmp_path):
    args = stage2_sets(cache_shards, teacher_run, tmp_path / "none", "train.objective=mfr",
                       f"out_dir={tmp_path / 'run'}", "train.max_steps=1")
    done = run_train(args)
    assert done.returncode == 2 and "python train/teacher_cache.py build --cfg" in done.stderr
    partial = tmp_path / "partial"
    subprocess.run(["cp", "-r", str(built), str(partial)], check=True)
    victim = open_cache(partial).parts[1].name
    (partial / "parts" / f"{victim}.json").unlink()
    done = run_train(stage2_sets(cache_shards, teacher_run, partial, "train.objective=mfr",
                                 f"out_dir={tmp_path / 'run2'}", "train.max_steps=1"))
    assert done.returncode == 2 and "incomplete" in done.stderr and victim in done.stderr
    assert "python train/teacher_cache.py build --cfg" in done.stderr


def test_bank_views_cycle_through_every_view():
    assert {bank_view(0, "clip", e, 4) for e in range(8, 12)} == {0, 1, 2, 3}      # each block of V epochs
    assert len({bank_view(0, f"clip{i}", 0, 4) for i in range(40)}) == 4                # clips out of step
    assert bank_view(0, "clip", 5, 4) == bank_view(0, "clip", 5, 4)                    # a pure function


def test_the_ffcv_storage_reads_what_the_records_hold(built, tmp_path):
    pytest.importorskip("ffcv", reason="FFCV is not installed (bash launch/install.sh --ffcv, as root)")
    out = tmp_path / "ffcv"
    done = run_tool(cache_cmd("export", str(built), str(out)))
    assert done.returncode == 0, done.stdout + done.stderr
    records, ffcv = open_cache(built), open_cache(out)
    assert ffcv.storage == "ffcv" and ffcv.identity == records.identity and ffcv.complete
    keys = list(records._where)
    for view in range(records.views):
        assert torch.equal(ffcv.read(keys, [view] * len(keys)), records.read(keys, [view] * len(keys)))
    assert verify(out) == []
    beton = ffcv.path(0)                                     # one byte of a stored value changed
    data = bytearray(beton.read_bytes())
    at = int(ffcv._ffcv_part(0).ptr["values"][1]) + 3
    data[at] ^= 0x40
    beton.write_bytes(bytes(data))
    damaged = open_cache(out)
    with pytest.raises(DataError, match="damaged"):
        damaged.read([json.loads((out / "parts" / f"{damaged.parts[0].name}.json").read_text())["keys"][0]], [1])
