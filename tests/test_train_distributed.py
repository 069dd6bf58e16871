"""Two processes on CPU under `accelerate launch`: DDP (with a pre-emption signal on one rank only), and
DeepSpeed ZeRO-2 / ZeRO-3 with bf16 (torch_autocast), each resumed and exported (every pickle read as data
only); all of them TSM+W3.
"""
from __future__ import annotations

import json
import math
import signal
import time

import psutil
import pytest
import torch

from helpers import (WritesMarker, clone, forge, losses, pickled, read_metrics, run_train, run_until_step_then_signal,
                     tiny)
from train import checkpoint as ckpt_io
from train.export import export
from train.unpickle import data_only
from w3model import build_model

pytestmark = pytest.mark.slow
DDP = ["--config_file", "launch/accelerate/ddp.yaml", "--num_processes", "2", "--main_process_port", "29631"]


def zero(stage: int, port: int) -> list[str]:
    return ["--config_file", f"launch/accelerate/zero{stage}.yaml", "--num_processes", "2",
            "--main_process_port", str(port)]


def _rank1_worker(proc) -> int:
    """The second training process under the launcher (the launcher itself is not signalled)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "train/run.py" in " ".join(p.cmdline()) and p.pid != proc.pid]
        if len(workers) >= 2:
            return sorted(workers, key=lambda p: p.create_time())[-1].pid
        time.sleep(0.1)
    raise AssertionError("no second worker process found")


def test_ddp_two_processes_agree_on_preemption_and_resume(train_shards, tmp_path):
    """SIGTERM to one rank only: both ranks stop at the same step, save one complete checkpoint with both
    ranks' loader positions, write PREEMPTED and exit 75; `--resume auto` finishes the run."""
    args = tiny(train_shards, tmp_path, "train.epochs=3", "train.ckpt_every=0")  # 2 steps per epoch per rank
    status, output = run_until_step_then_signal(args, tmp_path, 2, signal.SIGTERM, launcher=DDP,
                                                pick_pid=_rank1_worker)
    assert (tmp_path / "PREEMPTED").is_file(), output
    marker = json.loads((tmp_path / "PREEMPTED").read_text())
    assert marker["signal"] == "SIGTERM"
    assert "exitcode  : 75" in output or status == 75, output
    ckpt = ckpt_io.checkpoints_root(tmp_path) / ckpt_io.step_name(marker["step"])
    assert ckpt_io.is_complete(ckpt)
    assert {p.name for p in ckpt.glob("loader_rank*")} == {"loader_rank00000.json", "loader_rank00001.json"}
    assert ckpt_io.read_trainer_state(ckpt)["world_size"] == 2
    done = run_train(args + ["--resume", "auto"], launcher=DDP)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [s for s, _ in losses(tmp_path)] == list(range(1, 7))
    assert "MULTI_CPU x2" in done.stdout
    assert float(read_metrics(tmp_path, "eval.csv")[-1]["clips"]) == 8      # every val clip once over 2 ranks
    out, kwargs = export(tmp_path, tmp_path / "ddp.pt")
    build_model(**kwargs).load_state_dict(torch.load(out, weights_only=True), strict=True)


@pytest.mark.parametrize("stage, port", [(2, 29632), (3, 29633)])
def test_deepspeed_zero_bf16_trains_resumes_and_exports(train_shards, tmp_path, stage, port):
    args = tiny(train_shards, tmp_path, "train.precision=bf16", "train.epochs=2", "train.ckpt_every=0",
                "optim.lr_per_64=0.02", "train.max_steps=2")
    first = run_train(args, launcher=zero(stage, port))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "DEEPSPEED x2" in first.stdout
    ds = json.loads((tmp_path / "deepspeed_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and not ds["bf16"]["enabled"]
    assert ds["gradient_clipping"] == 20.0
    assert (ds["train_micro_batch_size_per_gpu"], ds["train_batch_size"]) == (4, 8)
    second = run_train(args[:-2] + ["--set", "train.max_steps=4", "--resume", "auto"], launcher=zero(stage, port))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed from" in second.stdout
    rows = losses(tmp_path)
    assert [s for s, _ in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(float(loss)) for _, loss in rows)
    ckpt = ckpt_io.resolve_resume("auto", tmp_path)
    assert (ckpt / "pytorch_model").is_dir()                   # DeepSpeed's own (sharded) checkpoint
    out, kwargs = export(ckpt, tmp_path / "zero.pt")            # consolidated by DeepSpeed's zero_to_fp32
    state = torch.load(out, weights_only=True)
    assert all(t.dtype != torch.bfloat16 for t in state.values())
    build_model(**kwargs).load_state_dict(state, strict=True)
    _crafted_zero_shard_never_runs(ckpt, tmp_path)


def _crafted_zero_shard_never_runs(ckpt, tmp_path) -> None:
    """A ZeRO optimiser shard that would run code: named by the check, and refused by DeepSpeed's own loaders
    (its checkpoint engine on resume, zero_to_fp32 on export call torch.load(weights_only off)) inside
    data_only(), where the real shard files load (resume and export above ran that way)."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    copy = clone(ckpt.parents[1], tmp_path / "crafted") / "checkpoints" / ckpt.name
    name = "pytorch_model/zero_pp_rank_0_mp_rank_00_optim_states.pt"
    marker = tmp_path / "code-ran"
    forge(copy, name, pickled({"optimizer_state_dict": WritesMarker(marker)}))
    assert ckpt_io.problems(copy) == [f"{copy / name}: refers to io.open, which is not data; refusing to unpickle it"]
    with data_only():
        for load in (lambda: TorchCheckpointEngine().load(str(copy / name), map_location="cpu"),
                     lambda: get_fp32_state_dict_from_zero_checkpoint(str(copy), tag="pytorch_model")):
            with pytest.raises(Exception, match="Weights only load failed"):
                load()
    assert not marker.exists()
