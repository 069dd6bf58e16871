"""Helpers for the shard tests: a tiny synthetic raw dataset sharded by the real CLI entry point, and
readers that read the result back the two ways downstream parts do (webdataset, DALI)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.shard import main as shard_main
from pipeline.synth import synthesize

TINY = dict(classes=2, clips_per_class=4, num_frames=16, width=64, height=48)


def make_raw(tmp: Path, dataset: str, **kw) -> Path:
    return synthesize(dataset, tmp / "raw", **{**TINY, **kw})


def shard(raw: Path, out: Path, dataset: str, *extra: str) -> int:
    return shard_main(["--dataset", dataset, "--root", str(raw), "--out", str(out), "--workers", "1",
                       "--no-progress", *extra])


def tars(shards_dir: Path, split: str) -> list[str]:
    manifest = json.loads((shards_dir / "manifest.json").read_text())
    return [str(shards_dir / s["file"]) for s in manifest["splits"][split]["shards"]]


def read_webdataset(shards_dir: Path, split: str) -> list[dict]:
    """Every sample of a split as `webdataset` yields it, in shard order."""
    import webdataset as wds

    return list(wds.WebDataset(tars(shards_dir, split), shardshuffle=False, empty_check=False).decode())


def read_dali(shards_dir: Path, split: str, ext: str) -> list[tuple[np.ndarray, dict]]:
    """(decoded frames, JSON) of every sample via DALI's fn.readers.webdataset + fn.decoders.video, CPU."""
    from nvidia.dali import fn, pipeline_def

    paths = tars(shards_dir, split)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        video, meta = fn.readers.webdataset(paths=paths, index_paths=[p[:-4] + ".idx" for p in paths],
                                            ext=[ext, "json"], missing_component_behavior="error",
                                            name="reader")
        return fn.decoders.video(video, device="cpu"), meta

    p = pipe()
    p.build()
    n = p.epoch_size("reader")
    out = []
    for _ in range(n):
        frames, meta = p.run()
        out.append((np.array(frames[0]), json.loads(bytes(np.array(meta[0])).decode())))
    return out
