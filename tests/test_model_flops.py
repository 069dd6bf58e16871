"""FLOP and parameter figures against the published ones (TSM-R50, the paper's W3 overhead band)."""
from __future__ import annotations

import json

import pytest

from w3model import flops

MMACTION2_TSM_R50_8F = {"gflops": 32.88, "params": 23.87e6}  # 174 classes, 8x224x224, MMAction2 model zoo
PAPER_W3_OVERHEAD = (0.015, 0.032)  # paper: +1.5 % (8 frames) .. +3.2 % (16 frames) over TSM


@pytest.fixture(scope="module")
def r50():
    return {(arch, frames): flops.count(arch, depth=50, frames=frames, classes=174)
            for arch in ("tsn", "tsm", "tsm_cbam", "tsm_nl", "tsm_w3") for frames in (8, 16)}


def test_tsm_r50_8f_matches_mmaction2(r50):
    tsm = r50["tsm", 8]
    # FlopCounterMode counts convolutions and matrix products only; MMAction2's counter adds element-wise
    # layers (BN, ReLU, pooling), about half a per cent of ResNet-50.
    assert tsm["gflops"] == pytest.approx(MMACTION2_TSM_R50_8F["gflops"], rel=0.01)
    # trunk 23,508,032 + fc 2048*174+174 = 23,864,558 (23.86 M); MMAction2 prints 23.87 M
    assert tsm["params"] == 23_508_032 + 2048 * 174 + 174
    assert tsm["params"] == pytest.approx(MMACTION2_TSM_R50_8F["params"], abs=0.01e6)


@pytest.mark.parametrize("frames", [8, 16])
def test_w3_overhead_is_inside_the_papers_band(r50, frames):
    overhead = r50["tsm_w3", frames]["gflops"] / r50["tsm", frames]["gflops"] - 1
    assert PAPER_W3_OVERHEAD[0] <= overhead <= PAPER_W3_OVERHEAD[1], overhead


def test_baselines_order_and_scaling(r50):
    for frames in (8, 16):
        assert r50["tsn", frames]["gflops"] == r50["tsm", frames]["gflops"]  # the shift costs no MACs
        assert r50["tsm", frames]["gflops"] < r50["tsm_cbam", frames]["gflops"] < r50["tsm_w3", frames]["gflops"]
        assert r50["tsm_w3", frames]["gflops"] < r50["tsm_nl", frames]["gflops"]
    # per-frame networks scale linearly with frames; non-local's affinity grows with frames squared
    assert r50["tsm_w3", 16]["gflops"] == pytest.approx(2 * r50["tsm_w3", 8]["gflops"], rel=1e-6)
    assert r50["tsm_nl", 16]["gflops"] > 2.1 * r50["tsm_nl", 8]["gflops"]
    assert r50["tsm", 8]["params"] == r50["tsn", 8]["params"] == r50["tsm", 16]["params"]


def test_cli_prints_one_json_object(capsys):
    assert flops.main(["--arch", "tsm", "--depth", "18", "--frames", "2", "--classes", "10", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["arch"] == "tsm" and result["frames"] == 2
    # ResNet-18 is 1.82 G multiply-accumulates per 224x224 frame (torchvision docs), minus its 1000-way fc
    assert result["gflops"] == pytest.approx(2 * 1.814, rel=0.01)
    assert result["params"] == 11_689_512 - 513_000 + 512 * 10 + 10


def test_cli_reports_a_bad_setting_without_traceback(capsys):
    assert flops.main(["--arch", "tsm", "--frames", "0"]) == 2
    err = capsys.readouterr().err
    assert "model.num_segments" in err and "Traceback" not in err
