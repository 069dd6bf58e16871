"""peek.py writes what the loader yields, un-normalised, and a contact sheet; errors are one line."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.loader import build_loader
from pipeline.peek import main, to_uint8
from helpers import SMALL

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("backend", ["dali", "reference"])
def test_peek_writes_the_loader_batches(vp9_shards, tmp_path, backend):
    out, png = tmp_path / "peek.npz", tmp_path / "sheet.png"
    rc = main([str(vp9_shards), "--split", "train", "--seed", "3", "--epoch", "1", "--world", "2", "--rank", "1",
               "--backend", backend, "--batches", "2", "--batch-size", "3", "--num-segments", "4",
               "--crop-size", "48", "--scale-size", "64", "--out", str(out), "--png", str(png)])
    assert rc == 0
    got = np.load(out)
    assert got["frames"].shape == (6, 4, 48, 48, 3) and got["frames"].dtype == np.uint8
    assert got["labels"].shape == (6,) and got["view_ids"].tolist() == [1] * 6
    assert got["frame_indices"].shape == (6, 4) and got["keys"].shape == (6,)

    loader = build_loader(vp9_shards, seed=3, world_size=2, rank=1, backend=backend,
                          **{**SMALL, "batch_size": 3})
    loader.set_epoch(1)
    batches = [b for _, b in zip(range(2), loader)]
    assert got["keys"].tolist() == [k for b in batches for k in b["keys"]]
    assert np.array_equal(got["frames"], np.concatenate([to_uint8(b["frames"]) for b in batches]))
    assert np.array_equal(got["frame_indices"], np.concatenate([b["frame_indices"].numpy() for b in batches]))

    import matplotlib.image
    sheet = matplotlib.image.imread(png)
    assert sheet.ndim == 3 and sheet.shape[0] > 100 and sheet.std() > 0.05  # six rows of real pictures


def test_to_uint8_inverts_the_normalisation():
    from pipeline.reference_loader import normalise
    import torch
    pixels = torch.randint(0, 256, (2, 3, 5, 7, 3), dtype=torch.uint8)
    normalised = torch.stack([normalise(clip) for clip in pixels])
    assert np.array_equal(to_uint8(normalised), pixels.numpy())


def test_peek_reports_errors_in_one_line(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipeline/peek.py: resource error: ") and "manifest.json" in err and "Traceback" not in err
