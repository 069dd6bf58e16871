"""Bad input never stops a run and is never dropped silently: one rejects.jsonl line per bad input,
input = written + rejected, and the exit status follows --max-reject-frac."""
from __future__ import annotations

import json
import shutil

import pytest

from pipeline.shard import main as shard_main
from helpers import make_raw, read_webdataset, shard


def _rejects(out):
    return {r["id"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}


def test_broken_videos_and_annotations_are_rejected_with_reasons(tmp_path, capsys):
    raw = make_raw(tmp_path, "sthv2", clips_per_class=8)     # train ids: 1000, 1002, ..., 1014
    videos = raw / "20bn-something-something-v2"
    (videos / "1000.webm").unlink()                                      # missing
    (videos / "1002.webm").write_bytes(b"")                              # empty
    data = (videos / "1004.webm").read_bytes()
    (videos / "1004.webm").write_bytes(data[: len(data) // 2])           # truncated
    data = (videos / "1012.webm").read_bytes()
    (videos / "1012.webm").write_bytes(data[: len(data) * 4 // 5])       # truncated late: decodes, stops early
    (videos / "1006.webm").write_bytes(b"\x00garbage" * 100)             # undecodable
    train = raw / "labels" / "something-something-v2-train.json"
    entries = json.loads(train.read_text())
    unknown = next(e for e in entries if e["id"] == "1008")
    unknown["template"] = "Juggling [something]"                         # unknown label
    val = raw / "labels" / "something-something-v2-validation.json"
    val_entries = json.loads(val.read_text())
    val_entries.append(next(dict(e) for e in entries if e["id"] == "1010"))   # duplicate id
    train.write_text(json.dumps(entries))
    val.write_text(json.dumps(val_entries))

    assert shard(raw, tmp_path / "s", "sthv2", "--max-reject-frac", "0.1") == 1
    out = tmp_path / "s" / "sthv2"
    rejects = _rejects(out)
    reasons = {k: r["reason"] for k, r in rejects.items()}
    assert reasons["1000"].startswith("missing video")
    assert reasons["1002"].startswith("empty video")
    assert "truncated" in reasons["1004"] and "truncated" in reasons["1012"]
    assert "undecodable" in reasons["1006"] or "corrupt" in reasons["1006"]
    assert "unknown label" in reasons["1008"]
    dup = [r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines()) if "duplicate" in r["reason"]]
    assert len(dup) == 1 and dup[0]["split"] == "val" and dup[0]["id"] == "1010"
    printed = capsys.readouterr()
    assert "input = written + rejected: 17 = 10 + 7 (ok)" in printed.out
    assert "more than --max-reject-frac" in printed.err
    m = json.loads((out / "manifest.json").read_text())
    assert m["rejects"]["count"] == 7 and sum(e["num_samples"] for e in m["splits"].values()) == 10
    written = {s["__key__"] for split in m["splits"] for s in read_webdataset(out, split)}
    assert not written & {k for k, r in rejects.items() if "duplicate" not in r["reason"]} and "1010" in written


def test_exit_zero_when_rejects_within_the_limit(tmp_path):
    raw = make_raw(tmp_path, "sthv2")
    (raw / "20bn-something-something-v2" / "1000.webm").unlink()
    assert shard(raw, tmp_path / "s", "sthv2", "--max-reject-frac", "0.2") == 0
    assert shard(raw, tmp_path / "t", "sthv2", "--max-reject-frac", "0.1") == 1


def test_frames_missing_from_a_folder(tmp_path):
    raw = make_raw(tmp_path, "sthv1", clips_per_class=2)
    (raw / "20bn-something-something-v1" / "1000" / "00005.jpg").unlink()
    shutil.rmtree(raw / "20bn-something-something-v1" / "1002")
    (raw / "20bn-something-something-v1" / "1001" / "00003.jpg").write_bytes(b"not a jpeg")
    assert shard(raw, tmp_path / "s", "sthv1", "--max-reject-frac", "1") == 0
    reasons = {k: r["reason"] for k, r in _rejects(tmp_path / "s" / "sthv1").items()}
    assert reasons["1000"].startswith("1 of 16 frames missing") and reasons["1000"].endswith("00005.jpg")
    assert reasons["1002"].startswith("missing or empty frame folder") and "undecodable frame" in reasons["1001"]


def test_epic_span_outside_the_video(tmp_path):
    raw = make_raw(tmp_path, "epic100", clips_per_class=2)
    csv = raw / "EPIC_100_train.csv"
    lines = csv.read_text().splitlines()
    fields = lines[1].split(",")
    fields[0], fields[4], fields[5], fields[6], fields[7] = "P01_01_9", "00:10:00.00", "00:10:01.00", "36000", "36060"
    csv.write_text("\n".join([*lines, ",".join(fields)]) + "\n")
    assert shard(raw, tmp_path / "s", "epic100", "--max-reject-frac", "1", "--splits", "train") == 0
    reasons = {k: r["reason"] for k, r in _rejects(tmp_path / "s" / "epic100").items()}
    assert list(reasons) == ["P01_01_9"] and "outside the video" in reasons["P01_01_9"]


def test_malformed_annotation_is_an_error_naming_file_and_line(tmp_path, capsys):
    raw = make_raw(tmp_path, "epic100", clips_per_class=1)
    csv = raw / "EPIC_100_train.csv"
    lines = csv.read_text().splitlines()
    lines[2] = lines[2].replace(",", ";", 3)
    csv.write_text("\n".join(lines) + "\n")
    assert shard(raw, tmp_path / "s", "epic100") == 2   # an error (pipeline.cli), not a finding
    err = capsys.readouterr().err
    assert "EPIC_100_train.csv:3" in err and "Traceback" not in err


@pytest.mark.parametrize("args,message", [
    (["--codec", "copy"], "--codec copy"),
    (["--label-convention", "file"], "applies to sthv1 only"),
    (["--splits", "train,dev"], "has only"),
    (["--shard-size", "0"], "--shard-size"),
])
def test_bad_options_are_config_errors(tmp_path, capsys, args, message):
    raw = make_raw(tmp_path, "egogesture", clips_per_class=1)
    assert shard(raw, tmp_path / "s", "egogesture", *args) == 2   # an error (pipeline.cli), not a finding
    assert message in capsys.readouterr().err


def test_missing_root_and_changed_options(tmp_path, capsys):
    assert shard(tmp_path / "nowhere", tmp_path / "s", "sthv2") == 2   # an error (pipeline.cli), not a finding
    assert "not found" in capsys.readouterr().err
    raw = make_raw(tmp_path, "sthv2", clips_per_class=1)
    assert shard(raw, tmp_path / "s", "sthv2", "--splits", "train") == 0
    assert shard(raw, tmp_path / "s", "sthv2", "--splits", "train", "--codec", "mjpeg") == 2   # an error (pipeline.cli), not a finding
    assert "other options (codec: 'vp9' -> 'mjpeg')" in capsys.readouterr().err
    assert shard_main(["verify", str(tmp_path / "nowhere")]) == 2   # an error (pipeline.cli), not a finding


def _cut_last_frames(video, frames: int) -> None:
    """Truncate a video file so that its last `frames` frames are gone (the header still says all)."""
    import av

    with av.open(str(video)) as c:
        starts = [p.pos for p in c.demux(video=0) if p.size]
    video.write_bytes(video.read_bytes()[:starts[-frames]])


@pytest.mark.parametrize("codec", ["vp9", "h264", "mjpeg", "copy"])
def test_sources_missing_frames_or_damaged_are_rejected_for_every_codec(tmp_path, codec):
    """The completeness check allowed 2 frames + 50 ms, so a 16-frame clip missing its last 1 or 2 frames
    was written as a shorter clip; `--codec copy` wrote sources without decoding them at all."""
    raw = make_raw(tmp_path, "sthv2", clips_per_class=4)       # train ids 1000, 1002, 1004, 1006
    videos = raw / "20bn-something-something-v2"
    _cut_last_frames(videos / "1000.webm", 1)
    _cut_last_frames(videos / "1002.webm", 2)
    data = (videos / "1004.webm").read_bytes()
    third = len(data) // 3
    (videos / "1004.webm").write_bytes(data[:third] + bytes(b ^ 0xFF for b in data[third:2 * third]) + data[2 * third:])
    assert shard(raw, tmp_path / "s", "sthv2", "--codec", codec, "--splits", "train", "--max-reject-frac", "1") == 0
    reasons = {k: r["reason"] for k, r in _rejects(tmp_path / "s" / "sthv2").items()}
    assert sorted(reasons) == ["1000", "1002", "1004"]
    assert "truncated" in reasons["1000"] and "truncated" in reasons["1002"]
    assert "truncated" in reasons["1004"] or "corrupt" in reasons["1004"] or "undecodable" in reasons["1004"]
    assert [s["json"]["num_frames"] for s in read_webdataset(tmp_path / "s" / "sthv2", "train")] == [16]


def test_an_mp4_missing_a_b_frame_is_truncated(tmp_path):
    """With B-frames the last packet in the file is not the last frame shown, so the last timestamp does
    not move when it is lost; the frame count in the MP4 header catches it."""
    from fractions import Fraction

    import av
    import numpy as np

    from pipeline.synth import render_clip
    from pipeline.transcode import SourceError, check_complete, decode_frames, open_video

    video = tmp_path / "b.mp4"
    with av.open(str(video), "w", format="mp4", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=12, options={"bf": "2"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i, rgb in enumerate(render_clip(0, 16, 64, 48, np.random.default_rng(0))):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 12)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    _cut_last_frames(video, 1)
    container, info = open_video(video)
    with container:
        times = [t for t, _ in decode_frames(container, video)]
    assert len(times) == 15 and max(times) == 15 / 12             # the last frame shown is still there
    with pytest.raises(SourceError, match="15 frames decode, the header counts 16"):
        check_complete(info, len(times), times[-1], video)


def test_an_avi_missing_its_last_frame_is_truncated(tmp_path):
    """An AVI's duration, as libavformat reports it, shrinks with the file; the frame count in its header
    does not."""
    import numpy as np

    from pipeline.synth import render_clip, write_video
    from pipeline.transcode import SourceError, check_complete, decode_frames, open_video

    video = tmp_path / "clip.avi"
    write_video(video, render_clip(0, 16, 64, 48, np.random.default_rng(0)), 12, "mjpeg")
    _cut_last_frames(video, 1)
    container, info = open_video(video)
    with container:
        times = [t for t, _ in decode_frames(container, video)]
    assert len(times) == 15 and info.duration_sec == pytest.approx(15 / 12) and info.frame_count == 16
    with pytest.raises(SourceError, match="truncated video .*about 1 frame"):
        check_complete(info, len(times), times[-1], video, from_start=False)
