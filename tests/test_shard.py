"""shard.py end to end on synthetic datasets: the §1 layout, read back with webdataset and with DALI."""
from __future__ import annotations

import io
import json
import shutil
import re
import tarfile
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.datasets import dataset_module
from pipeline.datasets.files import candidate_paths
from pipeline.manifest import verify
from pipeline.shard import main as shard_main
from pipeline.errors import DataError, ResourceError
from pipeline.shard_writer import index_tar, read_checksums, read_index, sha256_file
from pipeline.transcode import frames_to_array
from helpers import make_raw, read_dali, read_webdataset, rewrite_sample, shard

SPLITS = {"sthv1": ("train", "val", "test"), "sthv2": ("train", "val", "test"),
          "egogesture": ("train", "val", "test"), "epic100": ("train", "val", "test"), "epic55": ("train", "test")}


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
    assert m["options"]["seed"] == m["seed"] == 0 and m["options"]["shard_size"] == 3
    assert {s: e["num_samples"] for s, e in m["splits"].items()} == {"train": 4, "val": 2, "test": 2}
    assert [s["samples"] for s in m["splits"]["train"]["shards"]] == [3, 1]
    for entry in m["splits"].values():
        for s in entry["shards"]:
            tar = sthv2_shards / s["file"]
            assert tar.stat().st_size == s["bytes"] and sha256_file(tar) == s["sha256"]
            assert (sthv2_shards / s["index"]).is_file()
    assert m["rejects"] == {"count": 0, "file": "rejects.jsonl"}
    assert (sthv2_shards / "rejects.jsonl").read_text() == ""
    assert not (sthv2_shards / ".work" / "clips").exists()     # per-clip work files are cleaned up


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


def test_order_is_shuffled_with_the_seed_and_keys_are_stable(sthv2_shards, tmp_path):
    first = [s["__key__"] for s in read_webdataset(sthv2_shards, "train")]
    assert first != sorted(first) or len(first) < 3
    raw = sthv2_shards.parents[1] / "raw"
    assert shard(raw, tmp_path / "other", "sthv2", "--codec", "vp9", "--shard-size", "3", "--seed", "7") == 0
    other = [s["__key__"] for s in read_webdataset(tmp_path / "other" / "sthv2", "train")]
    assert sorted(other) == sorted(first) and other != first


def test_dali_decodes_every_sample(sthv2_shards):
    pytest.importorskip("nvidia.dali")
    out = read_dali(sthv2_shards, "train", "webm")
    assert len(out) == 4
    for frames, meta in out:
        assert frames.shape == (meta["num_frames"], meta["height"], meta["width"], 3)


def test_verify_passes_then_catches_corruption(sthv2_shards, tmp_path):
    assert verify(sthv2_shards) == []
    assert shard_main(["verify", str(sthv2_shards)]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(sthv2_shards, copy)
    tar = sorted((copy / "val").glob("*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[600] ^= 0xFF
    tar.write_bytes(bytes(data))
    problems = verify(copy)
    assert len(problems) == 1 and "sha256" in problems[0]
    assert shard_main(["verify", str(copy)]) == 1


def test_read_index_gives_each_members_bytes(sthv2_shards):
    for tar_path in sorted((sthv2_shards / "train").glob("*.tar")):
        rows = read_index(tar_path.with_suffix(".idx"))
        data = tar_path.read_bytes()
        with tarfile.open(tar_path) as tar:
            for key, members in rows:
                assert sorted(members) == ["json", "webm"]
                for ext, (offset, size) in members.items():
                    assert data[offset:offset + size] == tar.extractfile(f"{key}.{ext}").read()
                assert json.loads(data[members["json"][0]:sum(members["json"])])["key"] == key


def test_verify_catches_a_stale_or_malformed_index(sthv2_shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sthv2_shards, copy)
    idx = sorted((copy / "train").glob("*.idx"))[0]
    header, first, *rest = idx.read_text().splitlines()
    fields = first.split()
    fields[1] = str(int(fields[1]) + 512)                # first member's offset one tar block off
    idx.write_text("\n".join([header, " ".join(fields), *rest]) + "\n")
    problems = verify(copy)
    assert len(problems) == 1 and str(idx) in problems[0] and "offsets differ" in problems[0]
    idx.write_text("\n".join([header, first]) + "\n")  # a line lost: the header's count is wrong
    with pytest.raises(DataError, match=r":1: header says 3 samples, the index lists 1"):
        read_index(idx)
    problems = verify(copy)
    assert len(problems) == 1 and "header says 3 samples" in problems[0]


def test_index_names_each_member_of_one_sample(sthv2_shards, tmp_path):
    """A line of the index whose member names are not one key's `<key>.<ext>` would pair members of
    different samples: a DataError naming the line."""
    idx = tmp_path / "x.idx"
    header, first, *rest = sorted((sthv2_shards / "train").glob("*.idx"))[0].read_text().splitlines()
    other = rest[0].split()[3].split(".")[0]
    fields = first.split()
    fields[7] = f"{other}.json"
    idx.write_text("\n".join([header, " ".join(fields), *rest]) + "\n")
    with pytest.raises(DataError, match=r"x\.idx:2: members .* are not one sample's"):
        read_index(idx)


def test_checksums_match_each_member_and_index_tar_rewrites_them_identically(sthv2_shards, tmp_path):
    m = json.loads((sthv2_shards / "manifest.json").read_text())
    for s in m["splits"]["train"]["shards"]:
        sums = read_checksums(sthv2_shards / s["checksums"])
        with tarfile.open(sthv2_shards / s["file"]) as tar:
            assert sums == [(k, {e: zlib.crc32(tar.extractfile(f"{k}.{e}").read()) for e in c}) for k, c in sums]
        tar = shutil.copy(sthv2_shards / s["file"], tmp_path / Path(s["file"]).name)
        again = index_tar(Path(tar), tmp_path, s["sha256"])
        assert (again.index_sha256, again.checksums_sha256) == (s["index_sha256"], s["checksums_sha256"])


def test_verify_checks_every_samples_json_and_checksums(sthv2_shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sthv2_shards, copy)
    key = rewrite_sample(copy, "train", 0, 1, meta=lambda meta: {**meta, "label": 2})     # 2 classes
    problems = verify(copy)
    assert len(problems) == 1 and f"sample {key}: label 2 is not a class id of head 'label' (0..1" in problems[0]
    m = json.loads((copy / "manifest.json").read_text())
    sums = copy / m["splits"]["val"]["shards"][0]["checksums"]
    sums.write_text(re.sub(r'"json": (\d+)', lambda c: f'"json": {int(c[1]) ^ 1}', sums.read_text(), count=1))
    problems = verify(copy)[1:]
    assert len(problems) == 2 and "sha256 differs" in problems[0] and "fail their CRC-32 check" in problems[1]


def test_shards_written_before_checksums_get_them_when_the_command_is_rerun(sthv2_shards, tmp_path):
    """Loaders and verify refuse a shard set without member checksums and print the command that wrote
    it; rerunning that command keeps every tar (its sha256 still matches) and adds what is missing."""
    out = tmp_path / "s" / "sthv2"
    shutil.copytree(sthv2_shards, out)
    def without_checksums(entry):
        return {k: v for k, v in entry.items() if k not in ("checksums", "index_sha256", "checksums_sha256")}

    new = json.loads((out / "manifest.json").read_text())
    old = {**new, "splits": {split: {**e, "shards": [without_checksums(s) for s in e["shards"]]}
                             for split, e in new["splits"].items()}}
    (out / "manifest.json").write_text(json.dumps(old))
    for state in out.glob(".work/shards/*.json"):       # the shard tool's own record of each shard
        state.write_text(json.dumps(without_checksums(json.loads(state.read_text()))))
    for sums in out.glob("*/*.crc32.json"):
        sums.unlink()
    problems = verify(out)
    assert len(problems) == 1 and "written before member checksums" in problems[0]
    from pipeline.loader import build_loader
    with pytest.raises(ResourceError, match="written before member checksums") as err:
        build_loader(out, backend="reference")
    command = str(err.value).splitlines()[-1].strip()
    assert command.startswith("python pipeline/shard.py --dataset sthv2 --root ") and "--shard-size 3" in command
    tars = {p: p.stat().st_mtime_ns for p in out.glob("*/*.tar")}
    assert shard(sthv2_shards.parents[1] / "raw", tmp_path / "s", "sthv2", "--codec", "vp9", "--shard-size", "3") == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*.tar")} == tars
    assert json.loads((out / "manifest.json").read_text())["splits"] == new["splits"]
    assert verify(out) == [] and len(list(build_loader(out, backend="dali", batch_size=2, num_segments=2,
                                                       crop_size=32, scale_size=32))) == 2


@pytest.mark.parametrize("dataset", ["sthv1", "egogesture", "epic100", "epic55"])
def test_every_dataset_reads_back_with_webdataset_and_dali(tmp_path, dataset):
    raw = make_raw(tmp_path, dataset)
    assert shard(raw, tmp_path / "shards", dataset, "--shard-size", "3") == 0
    out = tmp_path / "shards" / dataset
    m = json.loads((out / "manifest.json").read_text())
    assert tuple(m["splits"]) == SPLITS[dataset]
    total = sum(e["num_samples"] for e in m["splits"].values())
    assert total == 8 and m["rejects"]["count"] == 0
    for split in SPLITS[dataset]:
        samples = read_webdataset(out, split)
        assert len(samples) == m["splits"][split]["num_samples"]
        for s in samples:
            meta = s["json"]
            assert meta["dataset"] == dataset and meta["split"] == split and meta["num_frames"] == 16
            labelled = split != "test"
            if dataset.startswith("epic"):
                assert meta["participant"].startswith("P") and meta["source"]["start_sec"] is not None
                assert (meta["verb_class"] is not None) == labelled
                if labelled:
                    assert m["classes"]["action"][meta["action_class"]] == [meta["verb_class"], meta["noun_class"]]
            else:
                assert (meta["label"] is not None) == (labelled or dataset == "egogesture")
            if dataset == "egogesture":
                assert meta["subject"].startswith("Subject")
    if dataset == "sthv1":
        assert m["label_convention"] == "alphabetical"
    pytest.importorskip("nvidia.dali")
    decoded = read_dali(out, SPLITS[dataset][0], "webm")
    assert [f.shape[0] for f, _ in decoded] == [meta["num_frames"] for _, meta in decoded]


def test_epic_cut_is_frame_accurate(tmp_path):
    """Each synthetic segment sits between uniform grey gap frames: a cut one frame early or late would
    start or end on grey. The cut from the video also matches the cut from the rgb_frames JPEGs."""
    raw = make_raw(tmp_path, "epic100", rgb_frames=True)
    assert shard(raw, tmp_path / "from_video", "epic100", "--splits", "train", "--codec", "mjpeg") == 0
    for p in raw.glob("P*/videos"):
        shutil.rmtree(p)
    assert shard(raw, tmp_path / "from_frames", "epic100", "--splits", "train", "--codec", "mjpeg") == 0
    video = {s["__key__"]: s for s in read_webdataset(tmp_path / "from_video" / "epic100", "train")}
    frames = {s["__key__"]: s for s in read_webdataset(tmp_path / "from_frames" / "epic100", "train")}
    assert video.keys() == frames.keys() and len(video) == 4
    for key, s in video.items():
        a, b = frames_to_array(s["avi"]), frames_to_array(frames[key]["avi"])
        assert a.shape == b.shape == (16, 48, 64, 3)
        for clip in (a, b):
            for edge in (clip[0], clip[-1]):
                assert np.abs(edge.astype(int) - 128).mean() > 10      # not a grey gap frame
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 6
        assert s["json"]["source"]["file"].endswith(".MP4")
        assert frames[key]["json"]["source"]["file"].endswith(key.rsplit("_", 1)[0])


@pytest.mark.parametrize("codec,ext", [("h264", "mp4"), ("mjpeg", "avi"), ("copy", "webm")])
def test_codecs(tmp_path, codec, ext):
    raw = make_raw(tmp_path, "sthv2", clips_per_class=2)
    assert shard(raw, tmp_path / "s", "sthv2", "--codec", codec, "--splits", "train") == 0
    out = tmp_path / "s" / "sthv2"
    m = json.loads((out / "manifest.json").read_text())
    assert m["video_ext"] == ext and m["codec"] == codec
    samples = read_webdataset(out, "train")
    for s in samples:
        frames = frames_to_array(s[ext])
        assert len(frames) == s["json"]["num_frames"] == 16
    if codec == "copy":
        src = raw / "20bn-something-something-v2" / f"{samples[0]['json']['id']}.webm"
        assert samples[0]["webm"] == src.read_bytes() and samples[0]["json"]["codec"] == "vp9"
    if codec == "h264":   # no B-frames (decode order = display order), a keyframe every 8 frames
        with av.open(io.BytesIO(samples[0]["mp4"])) as c:
            pts = [p.pts for p in c.demux(video=0) if p.size]
        with av.open(io.BytesIO(samples[0]["mp4"])) as c:
            keys = [f.key_frame for f in c.decode(video=0)]
        assert pts == sorted(pts) and [i for i, k in enumerate(keys) if k] == [0, 8]
    if codec != "h264":
        pytest.importorskip("nvidia.dali")
        assert len(read_dali(out, "train", ext)) == len(samples)


def test_resize_and_fps_resampling(tmp_path):
    raw = make_raw(tmp_path, "egogesture", clips_per_class=1)
    assert shard(raw, tmp_path / "s", "egogesture", "--short-side", "32", "--fps", "15",
                 "--splits", "train") == 0
    for s in read_webdataset(tmp_path / "s" / "egogesture", "train"):
        meta = s["json"]
        assert (meta["width"], meta["height"]) == (42, 32) and meta["fps"] == 15.0
        assert meta["num_frames"] == 8 == len(frames_to_array(s["webm"]))      # 16 frames at 30 -> 8 at 15


def test_sthv1_label_convention_is_recorded(tmp_path):
    raw = make_raw(tmp_path, "sthv1", clips_per_class=1)
    assert shard(raw, tmp_path / "s", "sthv1", "--label-convention", "file", "--splits", "train") == 0
    m = json.loads((tmp_path / "s" / "sthv1" / "manifest.json").read_text())
    assert m["label_convention"] == "file" and m["options"]["label_convention"] == "file"
    names = (raw / "something-something-v1-labels.csv").read_text().splitlines()
    assert m["classes"]["label"] == names


def test_tar_members_have_fixed_metadata(sthv2_shards):
    with tarfile.open(sorted((sthv2_shards / "train").glob("*.tar"))[0]) as tar:
        assert {(m.mtime, m.uid, m.gid, m.mode) for m in tar.getmembers()} == {(0, 0, 0, 0o644)}


def test_each_source_video_is_decoded_once(tmp_path, monkeypatch):
    import pipeline.clips as clips

    opened = []
    real_open = clips.open_video
    monkeypatch.setattr(clips, "open_video", lambda path: (opened.append(path), real_open(path))[1])
    raw = make_raw(tmp_path, "epic100")
    assert shard(raw, tmp_path / "s", "epic100") == 0
    m = json.loads((tmp_path / "s" / "epic100" / "manifest.json").read_text())
    assert sum(e["num_samples"] for e in m["splits"].values()) == 8
    assert len(opened) == len(set(opened)) == len(list(raw.glob("P*/videos/*.MP4"))) == 4


def test_epic55_from_rgb_frame_tars(tmp_path):
    raw = make_raw(tmp_path, "epic55", rgb_frames=True)
    shutil.rmtree(raw / "videos")
    for folder in sorted((raw / "frames_rgb_flow" / "rgb").glob("*/P*/P*_*")):
        with tarfile.open(f"{folder}.tar", "w") as tar:
            for jpg in sorted(folder.iterdir()):
                tar.add(jpg, arcname=f"./{jpg.name}")
        shutil.rmtree(folder)
    assert shard(raw, tmp_path / "s", "epic55") == 0
    samples = read_webdataset(tmp_path / "s" / "epic55", "test")
    assert len(samples) == 4 and all(s["json"]["source"]["file"].endswith(".tar") for s in samples)
    assert {s["json"]["test_set"] for s in samples} == {"s1", "s2"}
    assert all(len(frames_to_array(s["webm"])) == 16 for s in samples)


def test_copy_transcodes_a_source_with_audio(tmp_path):
    """`--codec copy` keeps only sources that already fit (VP8/VP9, no audio); others become VP9."""
    raw = make_raw(tmp_path, "sthv2", clips_per_class=2)
    video = raw / "20bn-something-something-v2" / "1000.webm"
    frames = frames_to_array(video.read_bytes())
    with av.open(str(video), "w", format="webm") as out:
        vs = out.add_stream("libvpx-vp9", rate=12)
        vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        aus = out.add_stream("libopus", rate=48000)
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, 12)
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        silence = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="fltp", layout="mono")
        silence.sample_rate, silence.pts = 48000, 0
        for p in [*aus.encode(silence), *aus.encode()]:
            out.mux(p)
    assert shard(raw, tmp_path / "s", "sthv2", "--codec", "copy", "--splits", "train") == 0
    samples = {s["json"]["id"]: s for s in read_webdataset(tmp_path / "s" / "sthv2", "train")}
    assert samples["1000"]["json"]["codec"] == "vp9" and samples["1000"]["webm"] != video.read_bytes()
    with av.open(io.BytesIO(samples["1000"]["webm"])) as c:
        assert not c.streams.audio and len(list(c.decode(video=0))) == 16
    assert samples["1002"]["webm"] == (video.parent / "1002.webm").read_bytes()


def test_seeking_over_gaps_gives_the_same_clips(tmp_path, monkeypatch):
    """Gaps longer than SEEK_GAP_SEC are skipped by seeking; the clips must not change by a bit."""
    import pipeline.clips as clips

    # 48-frame segments 10 frames apart: the source keyframe at frame 61 lies in the gap before the second
    raw = make_raw(tmp_path, "epic100", clips_per_class=4, num_frames=48)
    monkeypatch.setattr(clips, "SEEK_GAP_SEC", 1e9)
    assert shard(raw, tmp_path / "plain", "epic100", "--splits", "train") == 0
    seeks = []
    real = clips.decode_frames
    def counting(container, path, seek_to=None):
        seeks.append(seek_to)
        return real(container, path, seek_to)

    monkeypatch.setattr(clips, "decode_frames", counting)
    monkeypatch.setattr(clips, "SEEK_GAP_SEC", 0.01)
    assert shard(raw, tmp_path / "seek", "epic100", "--splits", "train") == 0
    assert any(s is not None and s > 1.0 for s in seeks)           # a seek forward past a keyframe
    plain = json.loads((tmp_path / "plain/epic100/manifest.json").read_text())["splits"]
    sought = json.loads((tmp_path / "seek/epic100/manifest.json").read_text())["splits"]
    assert plain == sought


def test_segment_ending_on_the_last_frame(tmp_path):
    raw = make_raw(tmp_path, "epic100", clips_per_class=1)
    csv = raw / "EPIC_100_train.csv"
    lines = csv.read_text().splitlines()
    fields = lines[1].split(",")
    info = {r.split(",")[0]: r.split(",") for r in (raw / "EPIC_100_video_info.csv").read_text().splitlines()[1:]}
    video = fields[2]
    last = round(float(info[video][1]) * float(info[video][2]))           # frames in the video
    fields[0], fields[6], fields[7] = f"{video}_8", str(last - 5), str(last)
    extra = fields.copy()
    extra[0], extra[6], extra[7] = f"{video}_9", str(last - 5), str(last + 1)
    csv.write_text("\n".join([*lines, ",".join(fields), ",".join(extra)]) + "\n")
    assert shard(raw, tmp_path / "s", "epic100", "--splits", "train", "--max-reject-frac", "1") == 0
    written = {s["__key__"]: s["json"] for s in read_webdataset(tmp_path / "s" / "epic100", "train")}
    assert written[f"{video}_8"]["num_frames"] == 6 and written[f"{video}_8"]["source"]["end_frame"] == last
    rejects = (tmp_path / "s" / "epic100" / "rejects.jsonl").read_text()
    assert f"{video}_9" in rejects and "outside the video" in rejects


def test_default_splits_skip_a_split_whose_annotation_file_is_absent(tmp_path, capsys):
    """Without --splits: the splits whose files are there are written, the absent one is named on stderr
    and in the manifest with the places looked for; with --splits listing it, its absence is an error."""
    raw = make_raw(tmp_path, "sthv2", clips_per_class=2)
    test_file = raw / "labels" / "something-something-v2-test.json"
    saved = test_file.read_bytes()
    test_file.unlink()
    assert shard(raw, tmp_path / "s", "sthv2", "--codec", "mjpeg") == 0
    printed = capsys.readouterr()
    skipped = [line for line in printed.err.splitlines() if "skipping split" in line]
    assert len(skipped) == 1 and skipped[0].startswith("sthv2: skipping split test: annotation file not found")
    assert str(test_file) in skipped[0] and str(raw / "test.json") in skipped[0]   # both releases' names
    assert "splits not written: test" in printed.out
    m = json.loads((tmp_path / "s" / "sthv2" / "manifest.json").read_text())
    assert list(m["splits"]) == ["train", "val"] and m["options"]["splits"] is None
    assert list(m["skipped_splits"]) == ["test"] and str(test_file) in m["skipped_splits"]["test"]
    assert m["skipped_splits"]["test"] == skipped[0].split("skipping split test: ", 1)[1]

    assert shard(raw, tmp_path / "t", "sthv2", "--codec", "mjpeg", "--splits", "train,val,test") != 0
    err = capsys.readouterr().err
    assert "something-something-v2-test.json" in err and "Traceback" not in err
    assert not (tmp_path / "t" / "sthv2" / "manifest.json").exists()

    test_file.write_bytes(saved)    # the file is back: the same command finds another shard set
    assert shard(raw, tmp_path / "s", "sthv2", "--codec", "mjpeg") != 0
    assert "resolved_splits: ['train', 'val'] -> ['train', 'val', 'test']" in capsys.readouterr().err


def test_explicit_splits_are_recorded_as_such(tmp_path):
    raw = make_raw(tmp_path, "sthv2", clips_per_class=1)
    assert shard(raw, tmp_path / "s", "sthv2", "--codec", "mjpeg", "--splits", "val") == 0
    m = json.loads((tmp_path / "s" / "sthv2" / "manifest.json").read_text())
    assert list(m["splits"]) == ["val"]
    assert m["skipped_splits"] == {"train": "not in --splits", "test": "not in --splits"}


def test_epic55_test_split_needs_both_test_files(tmp_path, capsys):
    """EPIC-55's test split is two files (s1, s2): with one gone it is skipped, naming that one, and
    the action classes still come from the train file, as with --splits train."""
    raw = make_raw(tmp_path, "epic55", clips_per_class=1)
    (raw / "EPIC_test_s2_timestamps.csv").unlink()
    assert shard(raw, tmp_path / "s", "epic55", "--codec", "mjpeg") == 0
    err = capsys.readouterr().err
    assert "epic55: skipping split test: " in err and "EPIC_test_s2_timestamps.csv" in err
    assert "EPIC_test_s1_timestamps.csv" not in err
    m = json.loads((tmp_path / "s" / "epic55" / "manifest.json").read_text())
    assert list(m["splits"]) == ["train"] and list(m["skipped_splits"]) == ["test"]
    assert m["action_classes_from"] == ["EPIC_train_action_labels.csv"] and m["classes"]["action"]
    assert shard(raw, tmp_path / "t", "epic55", "--codec", "mjpeg", "--splits", "train") == 0
    explicit = json.loads((tmp_path / "t" / "epic55" / "manifest.json").read_text())
    assert explicit["classes"] == m["classes"] and explicit["splits"]["train"]["num_samples"] == \
        m["splits"]["train"]["num_samples"]


@pytest.mark.parametrize("dataset", ["sthv2", "epic100"])
def test_no_split_present_is_an_error_naming_each_file_looked_for(tmp_path, capsys, dataset):
    raw = make_raw(tmp_path, dataset, clips_per_class=1)
    for split_files in dataset_module(dataset).SPLIT_FILES.values():
        for names in split_files:
            for path in candidate_paths(raw, names):
                path.unlink(missing_ok=True)
    assert shard(raw, tmp_path / "s", dataset) != 0
    err = capsys.readouterr().err
    assert f"error: no split of {dataset} has its annotation files under {raw}" in err
    for split_files in dataset_module(dataset).SPLIT_FILES.values():
        for names in split_files:
            assert all(str(p) in err for p in candidate_paths(raw, names))
    assert not (tmp_path / "s").exists()
