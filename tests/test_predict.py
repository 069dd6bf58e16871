"""train/predict.py on real files: the same clip scores the same through the val loader and from its source
file; every codec and frame folders; bad inputs listed while the rest go on; EPIC's verb, noun and action;
a run folder predicts like its export."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from helpers import REPO, LOADER_RAW, SMALL, loader_shards, run_tool, run_train, tiny
from pipeline.manifest import read_manifest
from pipeline.synth import render_clip, write_frames, write_video
from pipeline.video_inputs import find_inputs
from train.evaluate import action_scores
from train.exported_model import load_exported, write_exported
from train.predict import main as predict_main, top_classes
from w3model import build_model

pytestmark = pytest.mark.timeout(300)


def benchmark(name: str):
    """A script of benchmarks/ as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


AGREEMENT = benchmark("predict_agreement")      # the loader-vs-source comparison behind docs/BENCHMARKS.md
VIEW = {"num_segments": SMALL["num_segments"], "crop_size": SMALL["crop_size"], "scale_size": SMALL["scale_size"]}
SAME_DECODER_TOL = 1e-4        # the bound when both sides decode the same bytes the same way
TRANSCODED_TOL = 0.1           # this test model, source webm vs the shard tool's VP9 re-encode (measured 0.03)
JPEG_TO_VP9_TOL = 0.06         # JPEG folder vs its VP9 shard: measured 0.028 (0.12 without the yuv420p step)


def make_model(out: Path, manifest: dict, *, dataset: str = "sthv2") -> Path:
    """ResNet-18 TSM at the loader tests' sizes, with wide head weights so that scores are spread and any
    difference in the pixels shows in them (the initial 0.001 gives near-uniform scores)."""
    torch.manual_seed(0)
    kwargs = dict(arch="tsm", depth=18, num_segments=VIEW["num_segments"], heads=manifest["heads"], dropout=0.0)
    model = build_model(**kwargs)
    for head in model.heads.values():
        torch.nn.init.normal_(head.weight, 0.0, 1.0)
    record = {"dataset": dataset, "view": {k: VIEW[k] for k in ("crop_size", "scale_size")},
              "classes": manifest["classes"]}
    return write_exported(out, model, kwargs, record)


def scores_of(record: dict, head: str = "label") -> np.ndarray:
    """A record's scores as a vector over all classes (the record holds the top k; k = all here)."""
    return AGREEMENT.score_vector(record, head, len(record["top"][head]))


def loader_and_files(shards: Path, model_path: Path, split: str, mode: str, backend: str):
    """Per clip of a split: (scores through the loader, the predict record of its source file)."""
    return AGREEMENT.loader_vs_files(load_exported(model_path, torch.device("cpu")), shards, split, mode, backend,
                                     backend)


@pytest.fixture(scope="module")
def copied_shards(loader_tmp) -> Path:
    """Shards holding the source webm bytes (`--codec copy`), beside vp9_shards over the same raw set."""
    return loader_shards(loader_tmp, "copy")


@pytest.mark.slow
@pytest.mark.parametrize("backend,mode", [("dali", "val"), ("reference", "val"), ("dali", "test")])
def test_same_clip_scores_the_same_through_the_loader_and_from_its_source_file(copied_shards, tmp_path,
                                                                                backend, mode):
    model = make_model(tmp_path / "m.pt", read_manifest(copied_shards))
    split = "test" if mode == "test" else "val"
    pairs = loader_and_files(copied_shards, model, split, mode, backend)
    assert len(pairs) == 8
    for loader_scores, record in pairs:
        assert record["decoder"] == ("dali" if backend == "dali" else "pyav")
        assert record["views"] == (6 if mode == "test" else 1)
        assert np.argmax(scores_of(record)) == np.argmax(loader_scores)
        np.testing.assert_allclose(scores_of(record), loader_scores, atol=SAME_DECODER_TOL, rtol=0)
    assert max(np.ptp(s) for s, _ in pairs) > 0.3       # the scores are spread: a pixel difference would show


@pytest.mark.slow
def test_transcoded_shards_agree_within_the_documented_tolerance(vp9_shards, tmp_path):
    model = make_model(tmp_path / "m.pt", read_manifest(vp9_shards))
    pairs = loader_and_files(vp9_shards, model, "val", "val", "dali")
    diffs = [np.abs(scores_of(record) - s).max() for s, record in pairs]
    assert max(diffs) < TRANSCODED_TOL
    assert max(diffs) > SAME_DECODER_TOL             # re-encoding does change the pixels
    assert all(np.argmax(scores_of(r)) == np.argmax(s) for s, r in pairs)


@pytest.mark.slow
def test_jpeg_folders_score_like_their_vp9_shards(loader_tmp, tmp_path):
    """sthv1: frame folders sharded to VP9; predict converts JPEG frames as the shard tool does."""
    shards = loader_shards(loader_tmp, "vp9", splits="val", dataset="sthv1")
    model = make_model(tmp_path / "m.pt", read_manifest(shards), dataset="sthv1")
    pairs = loader_and_files(shards, model, "val", "val", "dali")
    assert {r["kind"] for _, r in pairs} == {"frames"}
    diffs = [np.abs(scores_of(record) - s).max() for s, record in pairs]
    assert max(diffs) < JPEG_TO_VP9_TOL
    assert all(np.argmax(scores_of(r)) == np.argmax(s) for s, r in pairs)


def write_mkv(path: Path, frames: np.ndarray) -> None:
    """VP9 in Matroska, with an audio track: a container the shard tool never writes."""
    with av.open(str(path), mode="w", format="matroska") as out:
        video = out.add_stream("libvpx-vp9", rate=12)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        audio = out.add_stream("libopus", rate=48000)
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            for packet in video.encode(vf):
                out.mux(packet)
            af = av.AudioFrame.from_ndarray(np.zeros((1, 4000), np.float32), format="flt", layout="mono")
            af.sample_rate, af.pts = 48000, i * 4000
            for packet in audio.encode(af):
                out.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                out.mux(packet)


@pytest.fixture(scope="module")
def clip_in_every_format(tmp_path_factory) -> Path:
    """One synthetic clip as mp4/H.264, webm/VP9, avi/MJPEG, mkv/VP9 and a sthv1-style JPEG folder."""
    folder = tmp_path_factory.mktemp("formats")
    frames = render_clip(3, LOADER_RAW["num_frames"], LOADER_RAW["width"], LOADER_RAW["height"],
                         np.random.default_rng(0))
    for codec, name in (("h264", "clip.mp4"), ("vp9", "clip.webm"), ("mjpeg", "clip.avi")):
        write_video(folder / name, frames, 12, codec)
    write_mkv(folder / "clip.mkv", frames)
    write_frames(folder / "1000", frames, "{:05d}.jpg")
    return folder


@pytest.mark.slow
def test_every_codec_and_frame_folders(clip_in_every_format, vp9_shards, tmp_path):
    model = make_model(tmp_path / "m.pt", read_manifest(vp9_shards))
    runs = {}
    for backend in ("dali", "reference"):
        out = tmp_path / f"{backend}.jsonl"
        assert predict_main([str(model), str(clip_in_every_format), "--json", str(out), "--backend", backend,
                             "--no-progress", "--topk", "99"]) == 0
        runs[backend] = {Path(r["input"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    dali, ref = runs["dali"], runs["reference"]
    assert {n: (r["codec"], r["decoder"]) for n, r in dali.items()} == {
        "clip.mp4": ("h264", "pyav"), "clip.webm": ("vp9", "dali"), "clip.avi": ("mjpeg", "dali"),
        "clip.mkv": ("vp9", "dali"), "1000": ("jpeg", "pyav")}
    assert {r["decoder"] for r in ref.values()} == {"pyav"}
    assert all(r["num_frames"] == LOADER_RAW["num_frames"] and r["views"] == 1 for r in dali.values())
    for name in dali:   # DALI's and torch's resizes differ by under 2 levels (tests/test_loader.py)
        np.testing.assert_allclose(scores_of(dali[name]), scores_of(ref[name]), atol=0.01, rtol=0)
    assert len({int(np.argmax(scores_of(r))) for r in dali.values()}) == 1   # one clip, one answer


def test_find_inputs_walks_folders_and_names_what_it_passes_over(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.MP4", "a/b/y.webm", "a/notes.txt", "a/b/00001.jpg", "a/b/00002.jpg", "a/cover.jpg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    found = find_inputs([tmp_path / "a", tmp_path / "a" / "x.MP4", tmp_path / "empty", tmp_path / "missing.mp4",
                         tmp_path / "a" / "notes.txt"])
    assert [p.relative_to(tmp_path).as_posix() for p in found.inputs] == ["a/b", "a/b/y.webm", "a/x.MP4",
                                                                           "a/notes.txt"]
    assert sorted(p.name for p in found.ignored) == ["cover.jpg", "notes.txt"]
    reasons = {p.name: why for p, why in found.failed}
    assert reasons["missing.mp4"] == "no such file or folder" and "no video files" in reasons["empty"]


@pytest.mark.slow
def test_bad_inputs_are_listed_with_their_reason_and_the_rest_go_on(clip_in_every_format, vp9_shards, tmp_path):
    good = clip_in_every_format / "clip.webm"
    data = good.read_bytes()
    bad = tmp_path / "bad"
    (bad / "gap").mkdir(parents=True)
    for n in (1, 2, 4):
        (bad / "gap" / f"{n:05d}.jpg").write_bytes((clip_in_every_format / "1000" / f"{n:05d}.jpg").read_bytes())
    (bad / "empty.webm").write_bytes(b"")
    (bad / "garbage.mp4").write_bytes(b"not a video " * 50)
    (bad / "short.webm").write_bytes(data[:len(data) // 2])        # cut short: the header says 2 s
    broken = bytearray(data)                                       # container intact, first frame zeroed
    with av.open(str(good)) as container:
        first = next(p for p in container.demux(video=0) if p.size)
    broken[first.pos + 2:first.pos + first.size - 2] = bytes(first.size - 4)
    (bad / "broken.webm").write_bytes(bytes(broken))
    (bad / "good.webm").write_bytes(data)                          # in one DALI batch with broken.webm
    model = make_model(tmp_path / "m.pt", read_manifest(vp9_shards))
    out = tmp_path / "out.jsonl"
    done = run_tool([sys.executable, "train/predict.py", str(model), str(bad), str(tmp_path / "nowhere"),
                     "--json", str(out), "--batch-size", "2", "--no-progress"])
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    records = {Path(r["input"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert records["good.webm"]["decoder"] == "pyav"               # DALI failed its batch; PyAV retried both
    errors = {name: r["error"] for name, r in records.items() if "error" in r}
    assert set(errors) == {"gap", "empty.webm", "garbage.mp4", "short.webm", "broken.webm", "nowhere"}
    assert "1 of 4 frames missing" in errors["gap"] and "empty video file" in errors["empty.webm"]
    assert "undecodable" in errors["garbage.mp4"] and "truncated" in errors["short.webm"]
    assert "cannot decode" in errors["broken.webm"] and errors["nowhere"] == "no such file or folder"
    assert "1 of 7 inputs predicted" in done.stderr
    for name in errors:
        assert f"{name}: " in done.stderr.split("6 failed:")[1]
    assert "good.webm  [vp9" in done.stdout


@pytest.mark.slow
def test_epic_prints_verb_noun_and_action(epic_shards, tmp_path):
    manifest = read_manifest(epic_shards)
    model = make_model(tmp_path / "m.pt", manifest, dataset="epic100")
    video = next((epic_shards.parent.parent / "raw-epic100").rglob("*.MP4"))
    out = tmp_path / "out.jsonl"
    done = run_tool([sys.executable, "train/predict.py", str(model), str(video), "--json", str(out), "--topk", "3",
                     "--no-progress"])
    assert done.returncode == 0, done.stderr
    (record,) = map(json.loads, out.read_text().splitlines())
    assert list(record["top"]) == ["verb", "noun", "action"]
    verbs, nouns = manifest["classes"]["verb"], manifest["classes"]["noun"]
    assert [e["name"] for e in record["top"]["verb"]] == [verbs[e["class"]] for e in record["top"]["verb"]]
    best_verb, best_noun = record["top"]["verb"][0], record["top"]["noun"][0]
    action = record["top"]["action"][0]          # the product of the heads' scores, as evaluation scores it
    assert action["class"] == [best_verb["class"], best_noun["class"]]
    assert action["name"] == f"{best_verb['name']} {best_noun['name']}"
    assert action["score"] == pytest.approx(best_verb["score"] * best_noun["score"], rel=1e-5)
    assert len(record["top"]["action"]) == 3
    assert f"  action  {action['score']:.4f}  {action['name']}" in done.stdout


def test_action_scores_are_evaluations_own():
    verb, noun = np.array([0.7, 0.3]), np.array([0.1, 0.5, 0.4])
    top = top_classes({"verb": verb, "noun": noun}, None, 2)
    act = action_scores(verb[None], noun[None])[0]
    assert [e["score"] for e in top["action"]] == pytest.approx(sorted(act, reverse=True)[:2])
    assert top["action"][0]["name"] == "class 0 class 1"


@pytest.mark.slow
def test_a_run_folder_predicts_like_its_export(train_shards, tmp_path, clip_in_every_format):
    out_dir = tmp_path / "run"
    done = run_train(tiny(train_shards, out_dir, "train.epochs=1", "eval.final=false",
                          "eval.every_epochs=0", arch="tsm"))
    assert done.returncode == 0, done.stderr
    assert run_tool([sys.executable, "train/export.py", str(out_dir), str(tmp_path / "m.pt")]).returncode == 0
    record = json.loads((tmp_path / "m.json").read_text())
    manifest = read_manifest(train_shards / "sthv2")
    assert record["classes"] == manifest["classes"] and record["dataset"] == "sthv2"
    assert record["view"] == {"crop_size": 32, "scale_size": 40}
    outputs = []
    for model in (out_dir, tmp_path / "m.pt"):
        done = run_tool([sys.executable, "train/predict.py", str(model), str(clip_in_every_format / "clip.webm"),
                         "--protocol", "test", "--no-progress"])
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1] and "test, 6 views; dali]" in outputs[0]
    assert any(name in outputs[0] for name in manifest["classes"]["label"])


@pytest.mark.parametrize("args, kind, says", [
    (["{tmp}/none.pt", "{tmp}"], "resource", "none.pt"),
    (["{tmp}/old.pt", "{tmp}"], "data", "re-export"),
    (["{tmp}/old.pt", "{tmp}", "--topk", "0"], "config", "--topk"),
])
def test_model_and_usage_errors_exit_2_with_one_message(tmp_path, capsys, args, kind, says):
    """Errors that stop the whole run (unlike a bad input): pipeline.cli's status 2 and one message."""
    (tmp_path / "old.pt").write_bytes(b"")
    (tmp_path / "old.json").write_text(json.dumps({"build_model": {"arch": "tsm", "depth": 18}}))
    assert predict_main([a.format(tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"train/predict.py: {kind} error: ") and says in err
    assert "Traceback" not in err


def test_throughput_benchmark_checks_its_options(tmp_path, capsys):
    assert benchmark("predict_throughput").main(["--work", str(tmp_path), "--codecs", "vp9,theora"]) == 2
    assert "--codecs: theora" in capsys.readouterr().err
