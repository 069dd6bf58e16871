"""train/visualize.py on trained tiny runs (TSM+W3, and TSM+CBAM beside it): Fig. 3's layout, the masks
it draws are the models' own, and bad inputs are one-line errors. Also checked on the same runs: the
trainer's warning for a run from scratch that did not say so."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import REPO, run_tool, run_train, tiny
from train.visualize import load_run, shown_frames, spatial_masks, visualize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(train_shards, tmp_path_factory):
    """One-epoch tiny runs: TSM+W3 from an experiment file that leaves model.pretrained at its default,
    and TSM+CBAM from smoke.yaml, which says null on purpose."""
    root = tmp_path_factory.mktemp("visualize")
    implicit = root / "implicit.yaml"
    implicit.write_text("\n".join(line for line in (REPO / "launch" / "smoke.yaml").read_text().splitlines()
                                  if "pretrained:" not in line) + "\n")
    done = {}
    for arch, cfg in (("tsm_w3", implicit), ("tsm_cbam", REPO / "launch" / "smoke.yaml")):
        args = tiny(train_shards, root / arch, "train.epochs=1", "data.num_segments=6", arch=arch)
        args[1] = str(cfg)
        result = run_train(args)
        assert result.returncode == 0, result.stdout + result.stderr
        done[arch] = (root / arch, result.stdout)
    return done


def test_a_run_from_scratch_warns_unless_its_config_says_so(runs):
    assert "warning: model.pretrained is null (the default): training from scratch" in runs["tsm_w3"][1]
    assert "warning: model.pretrained" not in runs["tsm_cbam"][1]


def test_picture_of_w3_with_cbam_beside(runs, train_shards, tmp_path):
    out = tmp_path / "attention.png"
    drawn = visualize(runs["tsm_w3"][0], train_shards, "val", out, compare=runs["tsm_cbam"][0], clips=3)
    assert out.stat().st_size > 20_000
    import matplotlib.image
    height, width = matplotlib.image.imread(out).shape[:2]
    assert width > 2 * height                                   # 3 rows x (5 + 5 frames + heatmap)
    assert drawn["frames"] == [0, 1, 2, 4, 5] and shown_frames(4) == [0, 1, 2, 3]
    assert len(drawn["keys"]) == 3 and [name for name, _ in drawn["models"]] == ["tsm_w3", "tsm_cbam"]
    # the drawn masks are the model's: recompute the first clip's W3 mask from the model itself
    model, config, _ = load_run(runs["tsm_w3"][0])
    from train.visualize import first_clips
    batch = first_clips(train_shards / "sthv2", "val", config, 3)
    with torch.no_grad():
        attention = model(batch["frames"], return_attention=True)["attention"]
    np.testing.assert_allclose(drawn["models"][0][1]["spatial"], spatial_masks(attention, (32, 32)), rtol=1e-5)
    assert drawn["models"][0][1]["spatial"].shape == (3, 6, 32, 32)
    assert drawn["models"][0][1]["channel"].shape == (3, 6, 16)
    last = attention["layer4.1"]["channel"][0].numpy()          # the most varying channel comes first
    assert np.isclose(drawn["models"][0][1]["channel"][0, :, 0].std(), last.std(axis=0).max())


def test_cli_errors_are_one_line(runs, train_shards, tmp_path):
    done = run_tool(["python3", "train/visualize.py", str(runs["tsm_w3"][0]), "--shards", str(tmp_path),
                     "--out", str(tmp_path / "a.png")])
    assert done.returncode == 2 and "no manifest.json" in done.stderr and "Traceback" not in done.stderr
    done = run_tool(["python3", "train/visualize.py", str(runs["tsm_w3"][0]), "--shards", str(train_shards),
                     "--out", str(tmp_path / "b.png"), "--clips", "2"])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "b.png").is_file() and "2 clips" in done.stdout
