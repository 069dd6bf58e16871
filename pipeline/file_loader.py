"""Batches of the plan's views from a user's own files (videos, JPEG frame folders) instead of shards.

Each batch holds whole inputs (all views of each: one under the val protocol, 2 clips x 3 crops under
test), so a batch's scores complete its inputs. Videos whose codec DALI decodes on this device go through
the DALI loader's own pipeline (`clip_pipeline`: the same decoder, resize and normalisation as training);
the others, frame folders, and everything under `backend='reference'` through the reference loader's
functions (PyAV), decoded in a few threads. A video DALI fails on is retried with PyAV; an input that
cannot be read at all is recorded in `failed` with the reason, and the rest go on.
"""
from __future__ import annotations

import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import av
import numpy as np
import torch

from pipeline import video_inputs
from pipeline.errors import DataError
from pipeline.loader_settings import LoaderSettings
from pipeline.plan import View
from pipeline.reference_loader import normalise
from pipeline.video_inputs import FRAMES, InputClip

# NVDEC's codecs ('mixed'); a video it refuses is retried with PyAV. The CPU set is dali_loader.CPU_DECODABLE.
GPU_DECODABLE = ("h264", "hevc", "av1", "vp8", "vp9", "mjpeg")
PROBE_CHUNK = 64          # inputs probed (and then decoded) together: output starts before all are probed
DALI_PREFETCH = 2


@dataclass
class _Planned:
    clip: InputClip
    views: list[View]


def _dali_modules():
    """(clip_pipeline, CPU_DECODABLE) of the DALI loader, or None when DALI is not installed."""
    from pipeline import dali_loader
    return None if dali_loader.pipeline_def is None else (dali_loader.clip_pipeline, dali_loader.CPU_DECODABLE)


class FileLoader:
    """Iterate to get batches (dict as the shard loaders give, plus `clips` and `decoder`); `failed` lists
    (path, reason) of every input that gave no batch. `settings`: mode, num_segments, crop_size,
    scale_size, batch_size (inputs per batch), num_threads, backend (dali = where it can)."""

    def __init__(self, paths: list[Path], settings: LoaderSettings, device: torch.device):
        self.paths, self.settings, self.device = list(paths), settings, device
        self.failed: list[tuple[Path, str]] = []
        self._dali = _dali_modules() if settings.backend == "dali" else None
        if settings.backend == "dali" and self._dali is None:
            print("NVIDIA DALI is not installed: every input is decoded with PyAV", file=sys.stderr)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for start in range(0, len(self.paths), PROBE_CHUNK):
            dali, pyav = [], []
            for planned in self._plan(self.paths[start:start + PROBE_CHUNK]):
                (dali if self._dali_decodes(planned.clip) else pyav).append(planned)
            retry: list[_Planned] = []
            yield from self._dali_batches(dali, retry)
            yield from self._pyav_batches(pyav + retry)

    # -------------------------------------------------------------------------------- planning

    def _plan(self, paths: list[Path]) -> Iterator[_Planned]:
        s = self.settings
        for path in paths:
            try:
                clip = video_inputs.probe(path)
            except (DataError, OSError) as e:
                self.failed.append((path, str(e)))
                continue
            yield _Planned(clip, video_inputs.plan_views(clip, mode=s.mode, num_segments=s.num_segments,
                                                         crop_size=s.crop_size, scale_size=s.scale_size))

    def _dali_decodes(self, clip: InputClip) -> bool:
        if self._dali is None or clip.kind == FRAMES:
            return False
        return clip.codec in (GPU_DECODABLE if self.device.type == "cuda" else self._dali[1])

    def _batch(self, items: list[_Planned], frames: torch.Tensor, decoder: str) -> dict[str, Any]:
        """The loaders' batch fields that evaluation reads, every view valid and unlabelled."""
        keys = [str(it.clip.path) for it in items for _ in it.views]
        view_ids = [v for it in items for v in range(len(it.views))]
        return {"frames": frames.to(self.device, non_blocking=True), "keys": keys,
                "view_ids": torch.tensor(view_ids, dtype=torch.int64),
                "valid": torch.ones(len(keys), dtype=torch.bool), "labels": {},
                "clips": [it.clip for it in items], "decoder": decoder}

    # -------------------------------------------------------------------------------- PyAV

    @staticmethod
    def _read(planned: _Planned) -> torch.Tensor:
        """(V, T, 3, H, W) float: the input's views, normalised as the loaders do."""
        return torch.stack([normalise(c) for c in video_inputs.read_views(planned.clip, planned.views)])

    def _pyav_batches(self, todo: list[_Planned]) -> Iterator[dict[str, Any]]:
        ready: list[tuple[_Planned, torch.Tensor]] = []
        for planned, result in _bounded_map(self._read, todo, self.settings.num_threads):
            if isinstance(result, (DataError, OSError, av.FFmpegError)):
                self.failed.append((planned.clip.path, str(result)))
                continue
            if isinstance(result, BaseException):
                raise result
            ready.append((planned, result))
            if len(ready) == self.settings.batch_size:
                yield self._batch([p for p, _ in ready], torch.cat([t for _, t in ready]), "pyav")
                ready = []
        if ready:
            yield self._batch([p for p, _ in ready], torch.cat([t for _, t in ready]), "pyav")

    # -------------------------------------------------------------------------------- DALI

    def _dali_pipeline(self, batches: list[list[_Planned]], first: int, fed: dict[int, list[_Planned]]):
        """A pipeline over batches[first:]; `fed` gets each batch as DALI takes it."""
        clip_pipeline, _ = self._dali
        gpu = self.device.type == "cuda"

        def source(info):
            step = first + info.iteration
            if step >= len(batches):
                raise StopIteration
            fed[step] = batches[step]
            data = [(np.frombuffer(p.clip.path.read_bytes(), np.uint8), v) for p in batches[step] for v in p.views]
            rois = [_roi(v) for _, v in data]
            return ([d for d, _ in data], [v.frame_indices for _, v in data], [r[0] for r in rois],
                    [r[1] for r in rois], [np.array(0, np.int32) for _ in data])

        s = self.settings
        side = s.scale_size if s.mode == "test" else s.crop_size
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) \
            if gpu else None
        pipe = clip_pipeline(source=source, decode_device="mixed" if gpu else "cpu", out_size=(side, side),
                             batch_size=s.batch_size * len(batches[first][0].views), num_threads=s.num_threads,
                             prefetch_queue_depth=DALI_PREFETCH, device_id=device_id, seed=s.seed)
        pipe.build()
        return pipe

    def _dali_batches(self, todo: list[_Planned], retry: list[_Planned]) -> Iterator[dict[str, Any]]:
        """Batches decoded by DALI. When DALI fails (a decoder error, a file gone), every batch it had taken
        and not returned goes to `retry` (PyAV, which names the input and the reason if it fails too), and a
        new pipeline continues after them: with prefetching, an error may surface a batch early."""
        b = self.settings.batch_size
        batches = [todo[i:i + b] for i in range(0, len(todo), b)]
        step = 0
        while step < len(batches):
            fed: dict[int, list[_Planned]] = {}
            pipe = self._dali_pipeline(batches, step, fed)
            try:
                while step < len(batches):
                    (out,) = pipe.run()
                    items = fed.pop(step)
                    step += 1
                    array = (out.as_cpu() if self.device.type == "cuda" else out).as_array()
                    yield self._batch(items, torch.from_numpy(array), "dali")
            except (RuntimeError, OSError):
                taken = sorted(fed) or [step]
                retry.extend(p for s in taken for p in batches[s])
                step = taken[-1] + 1
            finally:
                del pipe


def _roi(view: View) -> tuple[np.ndarray, np.ndarray]:
    """The view's box as DALI's resize ROI, in (H, W) order."""
    x, y, w, h = view.box
    return np.array([y, x], np.float32), np.array([y + h, x + w], np.float32)


def _bounded_map(fn: Callable, items: list, threads: int) -> Iterator[tuple[Any, Any]]:
    """(item, fn(item) or the exception it raised), in order, at most 2 x threads items ahead."""
    def call(item):
        try:
            return fn(item)
        except Exception as e:          # handed to the consumer, which decides what is fatal
            return e

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        pending: deque = deque()
        for item in items:
            pending.append((item, pool.submit(call, item)))
            if len(pending) >= 2 * max(1, threads):
                done_item, future = pending.popleft()
                yield done_item, future.result()
        while pending:
            done_item, future = pending.popleft()
            yield done_item, future.result()
