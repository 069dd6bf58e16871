"""Reference backend: how most people load video today, held to the same plan as the DALI loader.

The ``webdataset`` library streams whole shards (the plan reads a window of shards at a time, so each worker
keeps only the shards of the batch in hand), PyAV decodes in torch DataLoader workers, and torch crops,
resizes (bilinear, antialiased), mirrors and normalises. Worker ``w`` of ``W`` builds batches ``w, w + W, ...``;
the DataLoader hands them out round-robin, so they arrive in plan order.
"""
from __future__ import annotations

import io
import multiprocessing
from typing import Any, Iterator

import av
import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds

from pipeline.batches import (IMAGENET_MEAN, IMAGENET_STD, SampleSpec, SamplePlanner, Skip, VideoLoader,
                             batch_tensors)
from pipeline.errors import DataError
from pipeline.plan import PlanItem, View
from pipeline.shard_set import SampleError, ShardSet


_FULL_RANGE = {"yuvj420p": True, "yuv420p": False}


def frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """uint8 (H, W, 3) RGB with the conversion DALI's decoder uses: BT.601, chroma upsampled bilinearly.

    swscale's default for 4:2:0 -> RGB repeats chroma samples, which moves colour edges by up to ~60 levels
    against DALI; matching the conversion keeps the backends comparable pixel for pixel.
    """
    if frame.format.name not in _FULL_RANGE:
        return frame.to_ndarray(format="rgb24")
    h, w = frame.height, frame.width
    y, u, v = (torch.from_numpy(np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :p.width].astype(
        np.float32)) for p in frame.planes)
    uv = F.interpolate(torch.stack([u, v])[None], scale_factor=2, mode="bilinear", align_corners=False)[0, :, :h, :w]
    if _FULL_RANGE[frame.format.name]:
        luma, cb, cr = y, uv[0] - 128, uv[1] - 128
    else:
        luma, cb, cr = (y - 16) * (255 / 219), (uv[0] - 128) * (255 / 224), (uv[1] - 128) * (255 / 224)
    rgb = torch.stack([luma + 1.402 * cr, luma - 0.344136 * cb - 0.714136 * cr, luma + 1.772 * cb], dim=-1)
    return rgb.round_().clamp_(0, 255).to(torch.uint8).numpy()


def decode_frames(video: bytes, frame_indices: np.ndarray) -> np.ndarray:
    """The requested frames (decode order, repeats allowed) as uint8 (T, H, W, 3) RGB."""
    wanted = set(int(i) for i in frame_indices)
    last = max(wanted)
    got: dict[int, np.ndarray] = {}
    decoded = 0
    try:
        with av.open(io.BytesIO(video)) as container:
            for frame in container.decode(video=0):
                if decoded in wanted:
                    got[decoded] = frame_to_rgb(frame)
                decoded += 1
                if decoded > last:
                    break
    except av.FFmpegError as e:
        raise DataError(f"cannot decode: {e}") from e
    if len(got) != len(wanted):
        raise DataError(f"cannot decode: video ends before frame {last} that the plan needs (it decodes to "
                        f"{decoded} frames)")
    return np.stack([got[int(i)] for i in frame_indices])


def cut_view(frames: np.ndarray, view: View) -> torch.Tensor:
    """Crop the view's box, resize it to ``out_size`` and mirror it: uint8 (T, H, W, 3)."""
    x, y, w, h = view.box
    clip = torch.from_numpy(np.ascontiguousarray(frames[:, y:y + h, x:x + w])).permute(0, 3, 1, 2).float()
    clip = F.interpolate(clip, size=view.out_size, mode="bilinear", antialias=True, align_corners=False)
    clip = clip.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return clip.flip(2) if view.flip else clip


_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255


def normalise(clip: torch.Tensor) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (T, 3, H, W), ImageNet mean/std."""
    return (clip.permute(0, 3, 1, 2).float() - _MEAN) / _STD


class _ShardWindow:
    """Samples of the shards the current batch needs, streamed with webdataset; others are dropped."""

    def __init__(self, shards: ShardSet):
        self.shards = shards
        self.loaded: dict[int, list[dict[str, Any]]] = {}

    def sample(self, shard: int, index: int) -> dict[str, Any]:
        return self.loaded[shard][index]

    def keep(self, needed: set[int]) -> None:
        for shard in set(self.loaded) - needed:
            del self.loaded[shard]
        for shard in sorted(needed - set(self.loaded)):
            f = self.shards.files[shard]
            stream = wds.DataPipeline(wds.SimpleShardList([str(f.path)]), wds.tarfile_to_samples())
            try:
                samples = list(stream)
            except Exception as e:  # webdataset reports tar damage with tarfile/IO errors
                raise DataError(f"{f.path}: cannot read the shard: {e}") from e
            if len(samples) != f.samples:
                raise DataError(f"{f.path}: holds {len(samples)} samples, manifest says {f.samples}")
            self.loaded[shard] = samples


class _PlannedBatches(torch.utils.data.IterableDataset):
    """One epoch's batches from ``start`` on; inside DataLoader worker ``w`` only every W-th of them."""

    def __init__(self, planner: SamplePlanner, items: list[PlanItem], epoch: int, start: int, num_batches: int,
                 rank: int):
        self.planner, self.items, self.epoch, self.rank = planner, items, epoch, rank
        self.shards, self.settings = planner.shards, planner.settings
        self.start, self.num_batches = start, num_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        planner = self.planner
        window = _ShardWindow(self.shards)
        b = self.settings.batch_size
        for step in range(self.start + worker, self.num_batches, workers):
            try:
                yield self._batch(planner, window, self.items[step * b:(step + 1) * b], step)
            except DataError as e:  # handed over as data: the main process raises it without worker noise
                yield {"error": str(e)}
                return

    def _batch(self, planner: SamplePlanner, window: _ShardWindow, chunk: list[PlanItem], step: int
               ) -> dict[str, Any]:
        window.keep({it.shard for it in chunk})
        skips: list[Skip] = []  # reported (and logged) by the main process
        samples = [self._load(planner, window, item, step, skips) for item in chunk]
        samples = planner.fill_bad(samples, f"batch {step} (rank {self.rank})")
        batch = batch_tensors([spec for spec, _ in samples], self.shards.heads)
        batch["frames"] = torch.stack([normalise(clip) for _, clip in samples])
        batch["skipped"] = skips
        return batch

    def _load(self, planner: SamplePlanner, window: _ShardWindow, item: PlanItem, step: int,
              skips: list[Skip]) -> tuple[SampleSpec, torch.Tensor] | None:
        shard = self.shards.files[item.shard].path
        raw = window.sample(item.shard, item.index)
        key = raw.get("__key__", f"#{item.index}")
        try:
            data = {ext: value for ext, value in raw.items() if not ext.startswith("__")}
            meta, video = self.shards.sample(item.shard, item.index, key, data)
            spec = planner.spec(item, meta)
            try:
                return spec, cut_view(decode_frames(video, spec.view.frame_indices), spec.view)
            except DataError as e:
                raise SampleError(shard, key, str(e)) from None
        except SampleError as e:
            if self.settings.bad_sample == "raise":
                raise
            skips.append(Skip(self.epoch, step, str(shard), key, e.reason))
            return None


def _worker_context() -> multiprocessing.context.BaseContext:
    """Workers start from a fork server: forking a process that runs threads (a DALI pipeline, CUDA,
    the trainer's) can copy a held lock into the child and leave it waiting forever."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "av", "webdataset", "pipeline.reference_loader"])
    return ctx


class ReferenceLoader(VideoLoader):
    backend = "reference"

    def _batches(self, items: list[PlanItem], epoch: int, start: int) -> Iterator[tuple[int, dict[str, Any]]]:
        n = len(items) // self.settings.batch_size
        dataset = _PlannedBatches(self.planner, items, epoch, start, n, self.rank)
        workers = min(self.settings.num_threads, max(0, n - start))
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=workers, timeout=self.settings.timeout_s if workers else 0,
            pin_memory=self.device.type == "cuda", prefetch_factor=2 if workers else None,
            multiprocessing_context=_worker_context() if workers else None)
        batches = iter(loader)
        try:
            for step, batch in enumerate(batches, start):
                if "error" in batch:
                    raise DataError(batch["error"])
                for skip in batch.pop("skipped"):
                    self.skipped.add(skip)
                batch["frames"] = batch["frames"].to(self.device, non_blocking=True)
                yield step, batch
        finally:
            del batches  # stops the workers now, also when the consumer stops early or an error is raised
