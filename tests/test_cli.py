"""Every command-line tool follows pipeline.cli's convention: 0 done, 1 findings, 2 an error told in one line
(`<tool>: <kind> error: ...`) without a traceback, 75 pre-empted (tests/test_train.py)."""
from __future__ import annotations

import sys

import pytest

from helpers import REPO, corrupt_sample, copy_shards, run_tool

PY = sys.executable


def _one_error(done, prog: str, kind: str) -> str:
    """The error message: it starts `<prog>: <kind> error:` and ends the output (a list may follow on
    indented lines)."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    at = done.stderr.rfind(f"\n{prog}: ") + 1
    message = done.stderr[at:]
    assert message.startswith(f"{prog}: {kind} error: "), done.stderr
    assert all(line.startswith(" ") for line in message.strip().splitlines()[1:]), done.stderr
    return message


@pytest.mark.parametrize("cmd, prog, kind, says", [
    (["pipeline/shard.py", "--dataset", "sthv2", "--root", "{tmp}/nowhere"], "pipeline/shard.py", "resource",
     "annotation"),
    (["pipeline/shard.py", "--dataset", "sthv2", "--root", "{tmp}", "--shard-size", "0"], "pipeline/shard.py",
     "config", "--shard-size"),
    (["pipeline/shard.py", "verify", "{tmp}/nowhere"], "pipeline/shard.py", "resource", "manifest.json"),
    (["pipeline/synth.py", "--dataset", "sthv2", "--out", "{tmp}/raw", "--classes", "99"], "pipeline/synth.py",
     "config", "--classes"),
    (["pipeline/peek.py", "{tmp}", "--out", "{tmp}/x.npz"], "pipeline/peek.py", "resource", "manifest.json"),
    (["train/run.py", "--cfg", "{tmp}/missing.yaml"], "train/run.py", "resource", "missing.yaml"),
    (["train/export.py", "{tmp}", "{tmp}/model.pt"], "train/export.py", "resource", "COMPLETE"),
    (["-m", "w3model.flops", "--arch", "tsm", "--classes", "0"], "w3model.flops", "config", "model.heads"),
    (["benchmarks/model_step_time.py", "--archs", "tsm_w4"], "benchmarks/model_step_time.py", "config",
     "model.arch"),
    (["benchmarks/model_flops_table.py", "--classes", "0"], "benchmarks/model_flops_table.py", "config",
     "model.heads"),
    (["benchmarks/loader_throughput.py", "--work", "{tmp}/file"], "benchmarks/loader_throughput.py", "resource",
     "file"),
    (["benchmarks/train_throughput.py", "--preset", "h100", "--work", "{tmp}/w", "--shards", "{tmp}/none",
      "--archs", "tsm", "--steps", "1"], "benchmarks/train_throughput.py", "data", "tsm run failed"),
    (["benchmarks/shard_throughput.py", "--work", "{tmp}/w", "--clips-per-class", "0"],
     "benchmarks/shard_throughput.py", "config", "--clips-per-class"),
])
def test_errors_exit_2_with_one_message_and_no_traceback(tmp_path, cmd, prog, kind, says):
    (tmp_path / "file").write_text("not a folder")
    done = run_tool([PY, *(c.format(tmp=tmp_path) for c in cmd)], timeout=180)
    assert says in _one_error(done, prog, kind)


def test_usage_errors_exit_2():
    done = run_tool([PY, "pipeline/shard.py", "--dataset", "nonsense", "--root", "."])
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_findings_exit_1_and_success_0(tmp_path, vp9_shards):
    assert run_tool([PY, "pipeline/shard.py", "verify", str(vp9_shards)]).returncode == 0
    bad = copy_shards(vp9_shards, tmp_path / "sthv2")
    corrupt_sample(bad, "train", 0, 0)
    done = run_tool([PY, "pipeline/shard.py", "verify", str(bad)])
    assert done.returncode == 1 and "FAIL" in done.stdout and "Traceback" not in done.stderr


def test_a_script_run_by_path_does_not_shadow_libraries():
    """Run by path, peek.py's folder (pipeline/, with its datasets/ package) must not be first on sys.path,
    or `import datasets` (HuggingFace's, imported by accelerate/transformers) would find ours."""
    code = ("import runpy, sys; sys.argv = ['pipeline/peek.py', '--help']\n"
            "try:\n    runpy.run_path('pipeline/peek.py', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "import importlib.util\nspec = importlib.util.find_spec('datasets')\n"
            "print(spec.origin if spec else 'not installed')")
    script = REPO / "pipeline" / ".probe_shadow.py"
    script.write_text(code)
    try:
        done = run_tool([PY, str(script)])
    finally:
        script.unlink()
    assert done.returncode == 0, done.stderr
    assert "pipeline/datasets" not in done.stdout.strip().splitlines()[-1]
