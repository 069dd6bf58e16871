"""Both loaders on real shards from pipeline/shard.py: same plan -> same samples; order, ranks, resume."""
from __future__ import annotations

import json
import re
import time

import numpy as np
import psutil
import pytest
import torch

from pipeline.errors import ConfigError, DataError, ResourceError
from helpers import SMALL, copy_shards, loader_shards, rewrite_sample
from pipeline.loader import build_loader
from pipeline.plan import flip_label_map
from pipeline.shard_set import ShardSet

pytestmark = pytest.mark.timeout(300)  # a loader never hangs: a stuck one fails here

LEVEL = 1 / (255 * 0.229)  # one uint8 level in normalised units (the smallest ImageNet std)
# the loaders as tests run them: DALI with its batch callback or its parallel source (spawned workers: seconds
# to start, so its variants are few)
LOADERS = {"dali": dict(backend="dali"), "dali-parallel": dict(backend="dali", py_workers=2),
           "reference": dict(backend="reference")}


def epoch(shards, **kw):
    return list(build_loader(shards, **{**SMALL, **kw}))


def keys(batches, valid_only=False):
    return [k for b in batches for k, v in zip(b["keys"], b["valid"].tolist()) if v or not valid_only]


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["vp9", "mjpeg"])
@pytest.mark.parametrize("mode,split", [("train", "train"), ("val", "val"), ("test", "test")])
def test_backends_yield_the_same_samples(request, codec, mode, split):
    shards = request.getfixturevalue(f"{codec}_shards")
    dali = epoch(shards, split=split, mode=mode, backend="dali", flip=True)
    ref = epoch(shards, split=split, mode=mode, backend="reference", flip=True)
    assert len(dali) == len(ref) == len(build_loader(shards, split=split, mode=mode, **SMALL))
    for a, b in zip(dali, ref):
        assert a["keys"] == b["keys"]
        for name in ("view_ids", "valid", "frame_indices", "boxes", "flips"):
            assert torch.equal(a[name], b[name]), name
        assert torch.equal(a["labels"]["label"], b["labels"]["label"])
        side = SMALL["scale_size"] if mode == "test" else SMALL["crop_size"]
        assert a["frames"].shape == b["frames"].shape == (SMALL["batch_size"], SMALL["num_segments"], 3, side, side)
        assert a["frames"].dtype == torch.float32
        diff = (a["frames"] - b["frames"]).abs() / LEVEL
        if mode == "train":  # DALI's and torch's antialiased resizes differ a little at sharp edges
            assert diff.mean() < 0.25 and diff.max() < 16
        else:  # boxes of the output size: decoding alone agrees, up to rounding
            assert diff.max() < 2
    if mode == "train":
        assert {f for b in dali for f in b["flips"].tolist()} == {True, False}
    if mode == "test":
        assert sorted(set(dali[0]["view_ids"].tolist())) == [0, 1, 2, 3] and split == "test"
        assert set(dali[0]["labels"]["label"].tolist()) == {-1}  # unlabelled split


@pytest.mark.parametrize("codec,mode,split", [("vp9", "train", "train"), ("mjpeg", "test", "test")])
def test_dali_parallel_source_yields_the_batch_paths_samples(request, codec, mode, split):
    """The parallel source's workers plan each sample on their own: same keys, views and pixels as DALI's
    batch callback (the same decoder: the same bytes), so as the reference's (test above)."""
    shards = request.getfixturevalue(f"{codec}_shards")
    batch = epoch(shards, split=split, mode=mode, backend="dali", flip=True)
    parallel = epoch(shards, split=split, mode=mode, backend="dali", flip=True, py_workers=2)
    assert len(batch) == len(parallel) > 1
    for a, b in zip(batch, parallel):
        assert a["keys"] == b["keys"] and torch.equal(a["frames"], b["frames"])
        for name in ("view_ids", "valid", "frame_indices", "boxes", "flips"):
            assert torch.equal(a[name], b[name]), name
        assert torch.equal(a["labels"]["label"], b["labels"]["label"])


def test_dali_parallel_source_keeps_its_workers_across_epochs(vp9_shards):
    """One pipeline and the same worker processes serve epoch after epoch (each epoch's items computed in
    the workers), with the batch callback's samples in every epoch; an epoch left early is not continued."""
    batch_path = build_loader(vp9_shards, **{**SMALL, "backend": "dali", "flip": True})
    parallel = build_loader(vp9_shards, **{**SMALL, "backend": "dali", "flip": True, "py_workers": 2})
    workers, orders = [], []
    for epoch in range(3):
        expected = list(batch_path)
        orders.append([b["keys"] for b in expected])
        got = []
        for batch in parallel:
            got.append(batch)
            if len(got) == 1:
                workers.append(sorted(p.pid for p in psutil.Process().children(recursive=True)))
        assert [b["keys"] for b in got] == [b["keys"] for b in expected], epoch
        assert all(torch.equal(a["frames"], b["frames"]) for a, b in zip(got, expected)), epoch
        assert all(torch.equal(a["view_ids"], b["view_ids"]) for a, b in zip(got, expected)), epoch
    assert orders[0] != orders[1] != orders[2]          # shuffled per epoch: the workers followed the plan
    assert workers[0] and workers[0] == workers[1] == workers[2]
    parallel.set_epoch(3)
    next(iter(parallel))                        # epoch 3 left after one batch, then epoch 4 from its start
    parallel.set_epoch(4)
    batch_path.set_epoch(4)
    assert [b["keys"] for b in parallel] == [b["keys"] for b in batch_path]
    parallel.close()
    batch_path.close()


def test_flip_swaps_left_and_right_labels(vp9_shards):
    names = json.loads((vp9_shards / "manifest.json").read_text())["classes"]["label"]
    swap = flip_label_map(names)
    assert (swap != np.arange(len(names))).sum() == 6  # right/left, down-right/down-left, up-right/up-left
    plain = epoch(vp9_shards, backend="dali", flip=False)
    flipped = epoch(vp9_shards, backend="dali", flip=True)
    for a, b in zip(plain, flipped):
        assert a["keys"] == b["keys"] and torch.equal(a["boxes"], b["boxes"])  # flip is drawn last
        expect = torch.where(b["flips"], torch.from_numpy(swap)[a["labels"]["label"]], a["labels"]["label"])
        assert torch.equal(b["labels"]["label"], expect)
        for i in torch.nonzero(b["flips"]).flatten().tolist():  # mirrored pixels, not just labels
            assert torch.allclose(b["frames"][i], a["frames"][i].flip(-1), atol=1e-5)
    assert not any(f for b in plain for f in b["flips"].tolist())


def test_sthv2_defaults_to_no_flip(vp9_shards):
    assert not build_loader(vp9_shards, backend="dali", **SMALL).settings.flip


def test_epic_has_verb_and_noun_heads_and_flips_by_default(epic_shards):
    metas = {m["key"]: m for m in _metas(epic_shards, "train")}
    dali = build_loader(epic_shards, backend="dali", **{**SMALL, "batch_size": 2})
    assert dali.heads == {"verb": 4, "noun": 2} and dali.settings.flip
    batches = list(dali)
    for batch, ref in zip(batches, epoch(epic_shards, backend="reference", batch_size=2)):
        assert batch["keys"] == ref["keys"] and torch.equal(batch["flips"], ref["flips"])
        for head in ("verb", "noun"):
            assert torch.equal(batch["labels"][head], ref["labels"][head])
            assert batch["labels"][head].tolist() == [metas[k][f"{head}_class"] for k in batch["keys"]]
    assert sorted(keys(batches)) == sorted(metas)


def test_epochs_differ_and_ranks_partition(vp9_shards):
    all_keys = {m["key"] for m in _metas(vp9_shards, "train")}
    per_epoch = []
    for e in (0, 1):
        parts = []
        for rank in (0, 1, 2):
            loader = build_loader(vp9_shards, backend="dali", world_size=3, rank=rank, **SMALL)
            loader.set_epoch(e)
            batches = list(loader)
            assert len(batches) == len(loader) == 2  # ceil(16 / (3 * 4)) batches each
            parts.append(batches)
        valid = [keys(p, valid_only=True) for p in parts]
        assert sum(len(v) for v in valid) == len(all_keys) and set().union(*valid) == all_keys
        per_epoch.append([keys(p) for p in parts])
    assert per_epoch[0] != per_epoch[1]


def _metas(shards_dir, split):
    """Every sample's metadata JSON, read straight from the shards."""
    shards = ShardSet(shards_dir, split)
    out = [shards.read(s, i)[0] for s, n in enumerate(shards.shard_sizes) for i in range(n)]
    shards.close()
    return out


@pytest.mark.parametrize("backend,resume_backend", [("dali", "dali"), ("reference", "dali"), ("dali", "dali-parallel")])
def test_resume_mid_epoch_yields_exactly_the_remaining_batches(vp9_shards, backend, resume_backend):
    full = build_loader(vp9_shards, **LOADERS[backend], **SMALL)
    full.set_epoch(3)
    expected = list(full)
    assert full.state_dict()["epoch"] == 4 and full.state_dict()["step"] == 0  # the next epoch is current

    first = build_loader(vp9_shards, **LOADERS[backend], **SMALL)
    first.set_epoch(3)
    it = iter(first)
    for _ in range(2):
        next(it)
    state = first.state_dict()
    assert (state["epoch"], state["step"]) == (3, 2)

    resumed = build_loader(vp9_shards, **LOADERS[resume_backend], **SMALL)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(expected) - 2
    for a, b in zip(rest, expected[2:]):
        assert a["keys"] == b["keys"] and torch.equal(a["frame_indices"], b["frame_indices"])
        assert torch.equal(a["boxes"], b["boxes"])
        assert (a["frames"] - b["frames"]).abs().max() < 16 * LEVEL


def test_resume_refuses_other_settings(vp9_shards):
    state = build_loader(vp9_shards, backend="dali", **SMALL).state_dict()
    other = build_loader(vp9_shards, backend="dali", **{**SMALL, "crop_size": 32})
    with pytest.raises(ConfigError, match="crop_size: saved 48, now 32"):
        other.load_state_dict(state)
    build_loader(vp9_shards, backend="dali", rank=0, world_size=2, **SMALL).load_state_dict(
        build_loader(vp9_shards, backend="dali", rank=1, world_size=2, **SMALL).state_dict())  # ranks share it


def test_eval_counts_every_clip_once_across_ranks(vp9_shards):
    seen = []
    for rank in (0, 1):
        batches = epoch(vp9_shards, split="val", mode="val", backend="dali", world_size=2, rank=rank)
        seen += keys(batches, valid_only=True)
    assert sorted(seen) == sorted(m["key"] for m in _metas(vp9_shards, "val"))


def _second_planned(shards):
    """(shard, index) of the second sample of the first batch of epoch 0 (seed 0), so a failure comes early."""
    item = build_loader(shards, backend="reference", **SMALL).items(0)[1]
    return item.shard, item.index


def _change_in_place(shards, member):
    """Change one sample's bytes inside its tar, as a bad disk or copy would, leaving the tar readable:
    a byte of the video, or the JSON's label replaced by another valid one. Returns the key."""
    shard, index = _second_planned(shards)
    files = ShardSet(shards, "train")
    key, path = files.key(shard, index), files.files[shard].path
    offset, size = files.members(shard)[index]["json" if member == "label" else files.video_ext]
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(size)
        if member == "label":
            data = re.sub(rb'"label": (\d)', lambda m: b'"label": %d' % ((int(m[1]) + 1) % 8), data)
        else:
            data = data[:size // 2] + bytes([data[size // 2] ^ 0x10]) + data[size // 2 + 1:]
        f.seek(offset)
        f.write(data)
    return key


@pytest.mark.parametrize("backend,member", [(b, m) for b in ("dali", "reference") for m in ("video", "label")]
                         + [("dali-parallel", "video")])    # its worker finds the CRC-32 failure
def test_a_changed_byte_is_never_trained_on(vp9_shards, tmp_path, backend, member):
    """Every member is checked against the CRC-32 the shard tool wrote: a changed label or video byte
    raises naming shard and key (before, the label read back as another class, without a word), or the
    sample is skipped."""
    shards = copy_shards(vp9_shards, tmp_path / "bad")
    key = _change_in_place(shards, member)
    with pytest.raises(DataError) as err:
        next(iter(build_loader(shards, **LOADERS[backend], **SMALL)))
    assert key in str(err.value) and "sthv2-train-" in str(err.value) and "CRC-32" in str(err.value)
    loader = build_loader(shards, **LOADERS[backend], bad_sample="skip", **SMALL)
    assert next(iter(loader))["valid"].tolist() == [True, False, True, True]
    assert [(e.key, "CRC-32" in e.reason) for e in loader.skipped.entries] == [(key, True)]


@pytest.mark.parametrize("backend", sorted(LOADERS))
def test_bad_sample_skip_substitutes_and_keeps_step(vp9_shards, tmp_path, backend, caplog):
    clean = epoch(vp9_shards, **LOADERS[backend])
    shards = copy_shards(vp9_shards, tmp_path / "bad")
    key = rewrite_sample(shards, "train", *_second_planned(shards), video=lambda v: b"\0" * 64 + v[64:])
    loader = build_loader(shards, **LOADERS[backend], bad_sample="skip", **SMALL)
    with caplog.at_level("WARNING", logger="pipeline.loader"):
        batches = list(loader)
    assert len(batches) == len(clean)  # ranks stay in step
    assert key not in keys(batches) and key in keys(clean)
    assert batches[0]["valid"].tolist() == [True, False, True, True]
    assert batches[0]["keys"][1] == batches[0]["keys"][0]  # substituted by a good sample of the batch
    skips = [(e.epoch, e.batch, e.key, e.reason[:14]) for e in loader.skipped.entries]
    assert skips == [(0, 0, key, "cannot decode:")]
    assert key in caplog.text
    for a, b in zip(batches[1:], clean[1:]):
        assert a["keys"] == b["keys"]
    # substituted again next epoch (DALI: without another failed pipeline), and counted again: it is not
    # trained on in that epoch either
    assert len(list(loader)) == len(clean)
    assert [(e.epoch, e.key) for e in loader.skipped.entries] == [(0, key), (1, key)]


# JSON members as a faulty writer might leave them (checksums consistent): each is a named, skip-able error
BAD_METADATA = {
    "not UTF-8": (lambda m: json.dumps(m).encode().replace(b'"dataset"', b'"d\xffataset"'), "not UTF-8"),
    "not JSON": (lambda m: b"{{{", "not valid JSON"),
    "not an object": (lambda m: b"[1, 2]", "not an object"),
    "another key": (lambda m: {**m, "key": "1999"}, "names key '1999'"),
    "label out of range": (lambda m: {**m, "label": 8}, "label 8 is not a class id of head 'label' (0..7"),
    "label a string": (lambda m: {**m, "label": "3"}, "label '3' is not a class id"),
}


@pytest.fixture(scope="module", params=sorted(BAD_METADATA))
def bad_metadata(request, vp9_shards, tmp_path_factory):
    shards = copy_shards(vp9_shards, tmp_path_factory.mktemp("meta") / "sthv2")
    change, says = BAD_METADATA[request.param]
    return shards, rewrite_sample(shards, "train", *_second_planned(shards), meta=change), says


@pytest.mark.parametrize("backend", ["dali", "reference"])
def test_bad_metadata_is_a_named_error_or_skipped(bad_metadata, backend):
    """Before: invalid UTF-8 crashed both loaders with UnicodeDecodeError even under 'skip' (only
    JSONDecodeError was caught), and a label past the manifest's class count went into the batch."""
    shards, key, says = bad_metadata
    with pytest.raises(DataError) as err:
        next(iter(build_loader(shards, **LOADERS[backend], **SMALL)))
    assert says in str(err.value) and f"key {key}:" in str(err.value) and "sthv2-train-" in str(err.value)
    loader = build_loader(shards, **LOADERS[backend], bad_sample="skip", **SMALL)
    batch = next(iter(loader))
    assert batch["valid"].tolist() == [True, False, True, True] and key not in batch["keys"]
    assert [(e.key, says in e.reason) for e in loader.skipped.entries] == [(key, True)]


def _flip_middle(video: bytes) -> bytes:
    """Bytes flipped from a third of the clip on: the container breaks there, so the later frames are gone."""
    cut = len(video) // 3
    return video[:cut] + bytes(b ^ 0xFF for b in video[cut:2 * cut]) + video[2 * cut:]


UNDECODABLE = {"flipped bytes": dict(video=_flip_middle),
               "num_frames beyond the clip": dict(meta=lambda m: {**m, "num_frames": 2 * m["num_frames"]})}


@pytest.fixture(scope="module", params=sorted(UNDECODABLE))
def undecodable(request, vp9_shards, tmp_path_factory):
    """Shards whose second planned sample cannot give its planned frames, checksums and all consistent
    (as if the shard tool had written it so); (shards, key)."""
    shards = copy_shards(vp9_shards, tmp_path_factory.mktemp("undecodable") / "sthv2")
    item = build_loader(shards, backend="reference", **SMALL).items(0)[1]
    return shards, rewrite_sample(shards, "train", item.shard, item.index, **UNDECODABLE[request.param])


@pytest.mark.parametrize("backend", sorted(LOADERS))
def test_undecodable_clip_raises_naming_shard_and_key(undecodable, backend):
    """DALI's decoder pads frames it cannot decode with black by default (pad_mode='constant'): such a
    clip must fail like it does in the reference loader, not become a valid sample of black frames."""
    shards, key = undecodable
    with pytest.raises(DataError) as err:
        next(iter(build_loader(shards, **LOADERS[backend], **SMALL)))
    assert key in str(err.value) and "sthv2-train-" in str(err.value) and "cannot decode" in str(err.value)


def test_undecodable_clip_is_skipped_alike_by_both_backends(undecodable):
    shards, key = undecodable
    firsts = {}
    for backend in ("dali", "reference"):     # the parallel source's skips: test_bad_sample_skip_...
        loader = build_loader(shards, **LOADERS[backend], bad_sample="skip", **SMALL)
        firsts[backend] = next(iter(loader))
        assert [(e.key, e.reason[:14]) for e in loader.skipped.entries] == [(key, "cannot decode:")]
    for batch in firsts.values():
        assert key not in batch["keys"] and batch["valid"].tolist() == [True, False, True, True]
    assert firsts["dali"]["keys"] == firsts["reference"]["keys"]


def test_an_undecodable_clip_costs_under_two_seconds(vp9_shards, undecodable):
    """Finding which clip of a failed DALI batch is bad decodes the batches in flight one clip at a time in
    one reused probe pipeline (before: a pipeline built per clip, seconds each); the clean epoch is timed in
    the same test, so a slow or busy machine slows both. The default feed: with the parallel source the
    pipeline built after the failure also spawns its workers again (~1.5 s here)."""
    backend = "dali"
    shards, key = undecodable

    def seconds(root) -> float:
        start = time.perf_counter()
        epoch(root, **LOADERS[backend], bad_sample="skip")
        return time.perf_counter() - start

    seconds(vp9_shards)                          # DALI's first pipeline in this process pays its own start-up
    clean, corrupt = seconds(vp9_shards), seconds(shards)
    assert corrupt - clean < 2.0, f"{corrupt:.2f}s with one undecodable clip vs {clean:.2f}s clean"


def test_a_stale_index_is_refused_before_any_sample_is_read(vp9_shards, tmp_path):
    """An index whose offsets pair one sample's JSON with another's video (as a stale `.idx` from an
    earlier write of the tar would) differs from the one the manifest vouches for: refused at build time,
    naming the file, where before the loaders read the mismatched pair as one sample."""
    shards = copy_shards(vp9_shards, tmp_path / "stale")
    files = ShardSet(shards, "train").files
    header, first, second, *rest = files[1].index_path.read_text().splitlines()
    a, b = first.split(), second.split()
    a[4:8], b[4:8] = b[4:7] + [a[7]], a[4:7] + [b[7]]          # swap the JSON members' offsets, keep names
    files[1].index_path.write_text("\n".join([header, " ".join(a), " ".join(b), *rest]) + "\n")
    files[2].checksums_path.unlink()
    with pytest.raises(ResourceError) as err:
        build_loader(shards, backend="dali", **SMALL)
    assert f"{files[2].checksums_path} (missing)" in str(err.value)
    assert f"{files[1].index_path} (changed since the shard was written" in str(err.value)


def test_missing_and_truncated_shards_are_listed_at_start(vp9_shards, tmp_path):
    shards = copy_shards(vp9_shards, tmp_path / "damaged")
    files = ShardSet(shards, "train").files
    files[0].path.unlink()
    with open(files[2].path, "r+b") as f:
        f.truncate(files[2].bytes - 512)
    with pytest.raises(ResourceError) as err:
        build_loader(shards, backend="reference", **SMALL)
    message = str(err.value)
    assert f"{files[0].path} (missing)" in message and f"{files[2].path} (truncated" in message
    files[0].path.write_bytes(b"")  # present but empty: only damage left -> DataError
    with pytest.raises(DataError, match="2 shard file"):
        build_loader(shards, backend="dali", **SMALL)


def test_cpu_dali_refuses_h264_shards(loader_tmp):
    h264 = loader_shards(loader_tmp, "h264", splits="val")
    with pytest.raises(ResourceError, match="--codec vp9") as err:
        build_loader(h264, split="val", mode="val", backend="dali", device="cpu", **SMALL)
    assert "h264" in str(err.value) and "GPU" in str(err.value)
    assert len(epoch(h264, split="val", mode="val", backend="reference")) == 2  # the reference decodes anything


def test_settings_are_checked(vp9_shards):
    # the Python API names its keyword arguments (the trainer passes YAML labels: tests/test_config.py)
    with pytest.raises(ConfigError, match="^mode: 'training' is not one of"):
        build_loader(vp9_shards, mode="training")
    with pytest.raises(ConfigError, match="^backend: 'ffcv'"):
        build_loader(vp9_shards, backend="ffcv")
    with pytest.raises(ConfigError, match="^shuffle_window: must be >= 1"):
        build_loader(vp9_shards, shuffle_window=0)  # at build time, not at the first epoch
    with pytest.raises(ConfigError, match="^py_workers: must be >= 0"):
        build_loader(vp9_shards, py_workers=-1)
    with pytest.raises(ConfigError, match="^bad_sample: 'ignore'"):
        build_loader(vp9_shards, bad_sample="ignore")
    with pytest.raises(ConfigError, match="^split: 'training' is not in"):
        build_loader(vp9_shards, split="training")
    with pytest.raises(ConfigError, match=r"^crop_size \(300\) must not exceed scale_size"):
        build_loader(vp9_shards, crop_size=300, scale_size=256)
    with pytest.raises(ConfigError, match="rank"):
        build_loader(vp9_shards, rank=2, world_size=2)
    if not torch.cuda.is_available():
        with pytest.raises(ResourceError, match="no CUDA GPU"):
            build_loader(vp9_shards, device="cuda:0")
    with pytest.raises(ResourceError, match="manifest"):
        build_loader(vp9_shards / "train")


def test_malformed_manifest_is_a_data_error_naming_the_file(tmp_path):
    (tmp_path / "manifest.json").write_text('{"splits": ')
    with pytest.raises(DataError, match=r"manifest\.json:1: malformed JSON"):
        build_loader(tmp_path, backend="reference", **SMALL)
