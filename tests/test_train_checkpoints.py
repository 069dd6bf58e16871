"""Checkpoints are checked before use and read as data: checksums in COMPLETE, damaged files named, `--resume
auto` falling back past a damaged newest checkpoint, crafted pickles refused without running, RNG states
that accelerate would skip silently, and the weights of a run that stops mid-epoch kept."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import WritesMarker, clone, damage, forge, losses, pickled, run_train, tiny
from pipeline.errors import DataError
from train import checkpoint as ckpt_io
from train.export import export
from train.unpickle import data_only

STEPS = 4                     # 1 epoch of 4 steps; checkpoints at steps 2 and 4
RUN = ("train.epochs=1", "train.ckpt_every=2", "eval.every_epochs=0", "eval.final=false")


@pytest.fixture(scope="module")
def run(train_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("checkpointed")
    done = run_train(tiny(train_shards, out, *RUN))
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_complete_records_every_file_with_its_checksum(run):
    ckpt = ckpt_io.checkpoints_root(run) / ckpt_io.step_name(STEPS)
    files = json.loads((ckpt / ckpt_io.MARKER).read_text())["files"]
    assert set(files) == {"model.safetensors", "optimizer.bin", "random_states_0.pkl", "loader_rank00000.json",
                          ckpt_io.TRAINER_STATE}          # no pickled scheduler, no pickled loader state
    assert files["model.safetensors"]["bytes"] == (ckpt / "model.safetensors").stat().st_size
    assert ckpt_io.problems(ckpt) == []


def _flip_4k(path: Path) -> bytes:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(b ^ 0xFF for b in data[middle:middle + 4096])
    return bytes(data)


@pytest.mark.parametrize("name, change, says", [
    ("model.safetensors", _flip_4k, "contents changed since it was written"),
    ("optimizer.bin", lambda p: p.read_bytes()[:1000], "truncated or overwritten"),
    ("random_states_0.pkl", lambda p: b"", "0 bytes"),
    ("loader_rank00000.json", None, "missing"),
    (ckpt_io.TRAINER_STATE, lambda p: p.read_bytes()[:100], "truncated or overwritten"),
    (ckpt_io.MARKER, lambda p: p.read_bytes()[:50], "not a valid completion record"),
    ("loader_rank00000.pt", lambda p: pickled({"epoch": 0}), "not written by the trainer"),
])
def test_every_damaged_file_is_named(run, tmp_path, name, change, says):
    ckpt = clone(run, tmp_path) / "checkpoints" / ckpt_io.step_name(STEPS)
    path = ckpt / name
    damage(path, change)
    found = ckpt_io.problems(ckpt)
    assert len(found) == 1 and found[0].startswith(str(path)) and says in found[0], found
    with pytest.raises(DataError, match=name):
        export(ckpt, tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.slow
def test_resume_auto_falls_back_past_a_damaged_newest_checkpoint_and_stays_exact(run, train_shards, tmp_path):
    """4 KB flipped in the newest model.safetensors used to resume silently (weights near 1e29)."""
    out = clone(run, tmp_path)
    newest = ckpt_io.checkpoints_root(out) / ckpt_io.step_name(STEPS)
    damage(newest / "model.safetensors", _flip_4k)
    with pytest.raises(DataError, match="model.safetensors: contents changed"):     # named: no fallback
        ckpt_io.resolve_resume(str(newest), out)
    done = run_train(tiny(train_shards, out, *RUN) + ["--resume", "auto"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"checkpoint {newest} is damaged" in done.stdout and "model.safetensors" in done.stdout
    assert f"resumed from {ckpt_io.checkpoints_root(out) / ckpt_io.step_name(2)} at step 2" in done.stdout
    assert losses(out)[-2:] == losses(run)[-2:]            # steps 3 and 4 again, bit for bit
    assert ckpt_io.problems(newest) == []                  # and the damaged one rewritten


@pytest.mark.slow
def test_rng_states_that_accelerate_would_skip_are_an_error_naming_the_file(run, train_shards, tmp_path):
    """A valid pickle without the RNG states, recorded in COMPLETE: accelerate would log 'Could not load
    random states' and go on, no longer exact."""
    out = clone(run, tmp_path)
    ckpt = ckpt_io.checkpoints_root(out) / ckpt_io.step_name(STEPS)
    forge(ckpt, "random_states_0.pkl", pickled({"step": 0}))
    done = run_train(tiny(train_shards, out, *RUN) + ["--resume", str(ckpt)])
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert f"data error: {ckpt / 'random_states_0.pkl'}: RNG states lack random_state" in done.stderr


@pytest.mark.parametrize("name", ["optimizer.bin", "random_states_0.pkl", "loader_rank00000.pt"])
def test_a_crafted_pickle_is_named_and_never_runs(run, tmp_path, name):
    ckpt = clone(run, tmp_path / "run") / "checkpoints" / ckpt_io.step_name(STEPS)
    marker = tmp_path / "code-ran"
    forge(ckpt, name, pickled({"state": WritesMarker(marker)}))
    found = ckpt_io.problems(ckpt)
    assert found == [f"{ckpt / name}: refers to io.open, which is not data; refusing to unpickle it"]
    # what the loads inside the libraries meet: DeepSpeed's checkpoint engine unpickles with weights_only off
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    with pytest.raises(Exception, match="Weights only load failed"):
        with data_only():
            TorchCheckpointEngine().load(str(ckpt / name), map_location="cpu")
    assert not marker.exists()


def test_accelerates_custom_state_loader_is_data_only_too(tmp_path):
    """accelerate.checkpointing.load_custom_state calls torch.load(weights_only off) (objects registered
    for checkpointing; the trainer registers none now, but any caller inside data_only() is covered)."""
    from accelerate import PartialState
    from accelerate.checkpointing import load_custom_state
    PartialState()                                          # its logger wants one
    marker = tmp_path / "code-ran"
    (tmp_path / "custom_checkpoint_0.pkl").write_bytes(pickled({"x": WritesMarker(marker)}))

    class Registered:
        def load_state_dict(self, state):
            raise AssertionError("must not be reached")

    with pytest.raises(Exception, match="Weights only load failed"), data_only():
        load_custom_state(Registered(), str(tmp_path), 0)
    assert not marker.exists()


@pytest.mark.slow
def test_resuming_a_crafted_loader_state_refuses_without_running_it(run, train_shards, tmp_path):
    """Before: loader_rank00000.pt was read with torch.load(weights_only off) and its code ran on --resume."""
    out = clone(run, tmp_path / "run")
    marker = tmp_path / "code-ran"
    ckpt = ckpt_io.checkpoints_root(out) / ckpt_io.step_name(STEPS)
    forge(ckpt, "loader_rank00000.pt", pickled({"epoch": 0, "step": 0, "x": WritesMarker(marker)}))
    done = run_train(tiny(train_shards, out, *RUN) + ["--resume", str(ckpt)])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert f"{ckpt / 'loader_rank00000.pt'}: refers to io.open" in done.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_a_checkpoint_of_another_model_is_an_error_naming_it(run, train_shards, tmp_path):
    """Any other load failure (here: model.arch changed) used to end in accelerate's traceback, exit 1."""
    out = clone(run, tmp_path)
    done = run_train(tiny(train_shards, out, *RUN, arch="tsm") + ["--resume", "auto"])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stdout + done.stderr
    assert f"data error: {ckpt_io.checkpoints_root(out) / ckpt_io.step_name(STEPS)}: cannot be loaded into this " \
           f"run (RuntimeError: Error(s) in loading state_dict for VideoNet: Unexpected key(s)" in done.stderr


@pytest.mark.slow
def test_a_run_stopped_mid_epoch_by_max_steps_keeps_its_weights(train_shards, tmp_path):
    """train.max_steps inside an epoch with eval.final false used to save no checkpoint at all."""
    done = run_train(tiny(train_shards, tmp_path, "train.max_steps=2", "eval.final=false", "train.ckpt_every=0"))
    assert done.returncode == 0, done.stdout + done.stderr
    ckpt = ckpt_io.resolve_resume("auto", tmp_path)
    assert ckpt is not None and ckpt.name == ckpt_io.step_name(2)
    assert ckpt_io.read_trainer_state(ckpt)["batches_in_epoch"] == 2


def test_export_refuses_non_finite_weights(run, tmp_path):
    """An all-NaN "best" checkpoint used to be exported as it was."""
    from safetensors.torch import load_file, save_file
    from pipeline.errors import NumericError
    ckpt = clone(run, tmp_path / "run") / "checkpoints" / ckpt_io.step_name(STEPS)
    weights = load_file(str(ckpt / "model.safetensors"))
    name = next(k for k, t in weights.items() if t.is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(tmp_path / "nan.safetensors"), metadata={"format": "pt"})
    forge(ckpt, "model.safetensors", (tmp_path / "nan.safetensors").read_bytes())
    with pytest.raises(NumericError, match=f"1 of {len(weights)} tensors hold NaN or inf values \\({name}\\)"):
        export(ckpt, tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()
