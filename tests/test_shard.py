"""shard.py end to end on synthetic datasets: the §1 layout, read back with webdataset and with DALI."""
from __future__ import annotations

import json

import pytest

from pipeline.manifest import verify
from pipeline.shard_writer import sha256_file
from tests._shard_fixtures import make_raw, read_dali, read_webdataset, shard


@pytest.fixture(scope="module")
def sthv2_shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sthv2")
    raw = make_raw(tmp, "sthv2")
    assert shard(raw, tmp / "shards", "sthv2", "--codec", "vp9", "--shard-size", "3") == 0
    return tmp / "shards" / "sthv2"


def test_layout_and_manifest(sthv2_shards):
    m = json.loads((sthv2_shards / "manifest.json").read_text())
    assert m["dataset"] == "sthv2" and m["codec"] == "vp9" and m["video_ext"] == "webm"
    assert m["heads"] == {"label": 2} and len(m["classes"]["label"]) == 2
    assert m["options"]["seed"] == m["seed"] == 0
    assert {s: e["num_samples"] for s, e in m["splits"].items()} == {"train": 4, "val": 2, "test": 2}
    for entry in m["splits"].values():
        for s in entry["shards"]:
            tar = sthv2_shards / s["file"]
            assert tar.stat().st_size == s["bytes"] and sha256_file(tar) == s["sha256"]
            assert (sthv2_shards / s["index"]).is_file()
    assert m["rejects"] == {"count": 0, "file": "rejects.jsonl"}
    assert (sthv2_shards / "rejects.jsonl").read_text() == ""
    assert [p.name for p in (sthv2_shards / "train").iterdir() if p.suffix == ".tar"] != []


def test_index_matches_wds2idx(sthv2_shards, tmp_path):
    wds2idx = pytest.importorskip("wds2idx")
    for tar in sorted((sthv2_shards / "train").glob("*.tar")):
        with wds2idx.IndexCreator(str(tar), str(tmp_path / "x.idx"), verbose=False) as ic:
            ic.create_index()
        assert (tmp_path / "x.idx").read_text() == tar.with_suffix(".idx").read_text()


def test_webdataset_reads_every_sample(sthv2_shards):
    samples = read_webdataset(sthv2_shards, "train")
    assert len(samples) == 4
    for s in samples:
        meta = s["json"]
        assert s["__key__"] == meta["key"] and "." not in meta["key"]
        assert meta["label"] in (0, 1) and meta["num_frames"] == 16 and meta["fps"] == 12.0
        assert (meta["width"], meta["height"]) == (64, 48) and meta["codec"] == "vp9"
        assert meta["source"]["file"].endswith(f"{meta['id']}.webm")
        assert s["webm"][:4] == b"\x1a\x45\xdf\xa3"       # EBML (webm) magic
    test = read_webdataset(sthv2_shards, "test")
    assert all(s["json"]["label"] is None for s in test)


def test_dali_decodes_every_sample(sthv2_shards):
    pytest.importorskip("nvidia.dali")
    out = read_dali(sthv2_shards, "train", "webm")
    assert len(out) == 4
    for frames, meta in out:
        assert frames.shape == (meta["num_frames"], meta["height"], meta["width"], 3)


def test_verify_passes_then_catches_corruption(sthv2_shards, tmp_path):
    assert verify(sthv2_shards) == []
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(sthv2_shards, copy)
    tar = sorted((copy / "val").glob("*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[600] ^= 0xFF
    tar.write_bytes(bytes(data))
    problems = verify(copy)
    assert len(problems) == 1 and "sha256" in problems[0]
