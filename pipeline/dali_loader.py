"""DALI backend: the plan's samples decoded by ``fn.decoders.video`` and cut, resized, mirrored, normalised in DALI.

Encoded clips enter through ``fn.external_source`` (read by offset from the tars, via the DALI index files)
rather than ``fn.readers.webdataset``: the reader has its own order and shuffling, while the plan fixes the
order of every epoch and must resume at any step without reading earlier samples. Each sample brings its own
frame indices (``frames``), crop box (resize ROI) and mirror flag as per-sample argument inputs.

Two feeds, one plan. By default (``py_workers=0``) a batch callback on the loader's thread reads, checks and
plans each batch: on a 2-core CPU the reading is under 0.1 % of the work and a reader process would take a core
from decoding (docs/BENCHMARKS.md). With ``py_workers > 0`` DALI's parallel external source runs
``pipeline.dali_source.ClipSource`` in that many spawned processes (~1.5 s to start, per pipeline), one
sample per call, for machines where the Python side limits the decoder (many NVDEC streams); this process
then plans each batch from the JSON members alone, so labels and the skip log stay here, in step with the
pixels.

A failed pipeline does not say which sample broke it: the batches in flight are read again here and their
clips decoded one by one in one reused probe pipeline, stopping after the first batch with a bad clip (all
clips of all batches in flight, a pipeline each, cost up to seconds); what fails is raised under 'raise', or
remembered and substituted by the next pipeline under 'skip'.

On ``cuda:N`` the decoder runs as 'mixed' (NVDEC) and the transforms on that GPU; on the CPU it is libavcodec,
which DALI builds for VP8, VP9 and MJPEG only.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterator

import numpy as np
import torch

from pipeline.batches import (IMAGENET_MEAN, IMAGENET_STD, REPLAY_EPOCH, SampleSpec, Skip, VideoLoader,
                              batch_tensors)
from pipeline.dali_source import ClipSource, FixedItems, sample_arrays
from pipeline.errors import DataError, ResourceError, W3Error
from pipeline.loader_settings import LoaderSettings
from pipeline.plan import PlanItem
from pipeline.shard_set import SampleError, ShardSet

PREFETCH = 2
IN_FLIGHT = PREFETCH + 2  # batches a failure may come from: DALI's queue, and the source workers' one ahead
CPU_DECODABLE = ("vp9", "vp8", "mjpeg")  # DALI's CPU video decoder; the rest needs NVDEC

try:
    from nvidia.dali import fn, pipeline_def, types
except ImportError:  # reported when a DALI loader is asked for
    pipeline_def = None


def require_dali() -> None:
    if pipeline_def is None:
        raise ResourceError("backend 'dali': NVIDIA DALI is not installed; `pip install -e .[dali]` "
                            "(nvidia-dali-cuda130 or -cuda120), or use backend='reference'")


# Frames the decoder cannot give (the clip is shorter than its JSON says, or broken part-way) are an
# error with 'none'; DALI's default, 'constant', silently hands back black frames in their place.
PAD_MODE = "none"

if pipeline_def is not None:
    @pipeline_def
    def clip_pipeline(source: Callable, decode_device: str, out_size: tuple[int, int], parallel: bool = False):
        """encoded clip + frame indices + ROI + mirror -> float (T, 3, H, W), ImageNet-normalised. ``parallel``:
        ``source`` is a per-sample ClipSource run in DALI's worker processes; else a batch callback here."""
        if parallel:
            inputs = fn.external_source(source=source, num_outputs=5, batch=False, parallel=True)
        else:
            inputs = fn.external_source(source=source, num_outputs=5, batch=True, batch_info=True)
        encoded, frames, roi_start, roi_end, mirror = inputs
        video = fn.decoders.video(encoded, device=decode_device, frames=frames, pad_mode=PAD_MODE)
        video = fn.resize(video, roi_start=roi_start, roi_end=roi_end, size=list(out_size), antialias=True)
        return fn.crop_mirror_normalize(video, mirror=mirror, dtype=types.FLOAT, output_layout="FCHW",
                                        mean=[m * 255 for m in IMAGENET_MEAN], std=[s * 255 for s in IMAGENET_STD])

    @pipeline_def
    def probe_pipeline(decode_device: str):
        """Decodes one clip alone, to find which sample of a failed batch is bad."""
        encoded = fn.external_source(name="encoded")
        frames = fn.external_source(name="frames")
        return fn.decoders.video(encoded, device=decode_device, frames=frames, pad_mode=PAD_MODE)


_OUT_OF_BOUNDS = re.compile(r"out-of-bounds frame index (\d+) .* with (\d+) frames")


def _dali_reason(error: Exception) -> str:
    """The decoder's own words from a DALI error (after "encountered:"), not the pipeline boilerplate."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "encountered:" in lines and lines.index("encountered:") + 1 < len(lines):
        reason = lines[lines.index("encountered:") + 1]
    else:
        reason = lines[0] if lines else repr(error)
    short = _OUT_OF_BOUNDS.search(reason)
    if short:   # the same words as the reference loader's
        return f"video ends before frame {short[1]} that the plan needs (it decodes to {short[2]} frames)"
    return reason


class DaliLoader(VideoLoader):
    backend = "dali"

    def __init__(self, shards: ShardSet, settings: LoaderSettings, **common):
        require_dali()
        super().__init__(shards, settings, **common)
        self._gpu = self.device.type == "cuda"
        if self._gpu:
            self._device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        elif shards.codec not in CPU_DECODABLE and not (shards.codec == "copy" and shards.video_ext == "webm"):
            raise ResourceError(
                f"{shards.root}: shards are coded as {shards.codec!r}; DALI's CPU decoder reads only "
                f"{', '.join(CPU_DECODABLE)}. Reshard with `python pipeline/shard.py ... --codec vp9` "
                f"(or --codec mjpeg), run on a GPU (device='cuda'), or use backend 'reference'")
        self._bad: dict[tuple[int, int], str] = {}  # (shard, index) -> why it is bad, remembered across epochs
        self._probe_pipe = None
        # parallel source: the pipeline of the epoch that ended, reset for the next one, with its workers
        # alive: (pipeline, the epoch it serves next, the bad samples its workers know)
        self._kept: tuple[Any, int, frozenset] | None = None

    @property
    def _decode_device(self) -> str:
        return "mixed" if self._gpu else "cpu"

    def _pipe_kwargs(self, batch_size: int) -> dict[str, Any]:
        return dict(batch_size=batch_size, num_threads=self.settings.num_threads, prefetch_queue_depth=PREFETCH,
                    device_id=self._device_id if self._gpu else None, seed=self.settings.seed)

    # -------------------------------------------------------------------------------- sample preparation

    def _prepare(self, items: list[PlanItem], epoch: int, step: int, video: bool = True
                 ) -> list[tuple[SampleSpec, bytes | None]]:
        """Read and plan one batch; under 'skip', unreadable or known-bad samples are substituted. Without
        ``video`` only the metadata is read (the source workers read, and check, the video bytes)."""
        b = self.settings.batch_size
        samples: list[tuple[SampleSpec, bytes | None] | None] = []
        for item in items[step * b:(step + 1) * b]:
            reason = self._bad.get((item.shard, item.index))
            if reason is None:
                try:
                    if video:
                        meta, data = self.shards.read(item.shard, item.index)
                    else:
                        meta, data = self.shards.read_meta(item.shard, item.index), None
                    samples.append((self.planner.spec(item, meta), data))
                    continue
                except SampleError as e:   # a shard-level DataError (its index unreadable) is never skipped
                    if self.settings.bad_sample == "raise":
                        raise
                    reason = self._bad[item.shard, item.index] = e.reason
            shard, key = str(self.shards.files[item.shard].path), self.shards.describe(item.shard, item.index)
            if self.settings.bad_sample == "raise":
                raise SampleError(shard, key, reason)
            self.skipped.add(Skip(epoch, step, shard, key, reason))
            samples.append(None)
        return self.planner.fill_bad(samples, f"batch {step} (rank {self.rank})")

    def _source(self, items: list[PlanItem], epoch: int, start: int, pending: dict[int, list[SampleSpec]]):
        """Batch mode: a callback on this thread that reads, plans and records each batch's specs."""
        n = len(items) // self.settings.batch_size

        def source(info):
            step = start + info.iteration
            if step >= n:
                raise StopIteration
            batch = self._prepare(items, epoch, step)
            pending[step] = [spec for spec, _ in batch]
            return tuple(list(column) for column in zip(*(sample_arrays(spec, video) for spec, video in batch)))
        return source

    def _pipeline(self, items: list[PlanItem], epoch: int, start: int, pending: dict[int, list[SampleSpec]]):
        s = self.settings
        kwargs = self._pipe_kwargs(s.batch_size)
        if s.py_workers:
            for shard in {it.shard for it in items}:   # index tables parsed and hashed here, once; the
                self.shards.members(shard)             # workers get them with the pickled planner
            items_of = FixedItems(items) if epoch == REPLAY_EPOCH else self.epoch_plan
            source = ClipSource(self.planner, items_of, epoch, start, s.batch_size, frozenset(self._bad))
            # spawned, not forked: a fork of this process, with DALI's and torch's threads running, crashed
            # its child now and then (segfault at worker start, tests/test_loader.py in one process)
            kwargs.update(py_num_workers=s.py_workers, py_start_method="spawn")
        else:
            source = self._source(items, epoch, start, pending)
        out_size = (s.scale_size, s.scale_size) if s.mode == "test" else (s.crop_size, s.crop_size)
        pipe = clip_pipeline(source=source, decode_device=self._decode_device, out_size=out_size,
                             parallel=bool(s.py_workers), **kwargs)
        pipe.build()
        return pipe

    # -------------------------------------------------------------------------------- bad samples

    def _probe(self, video: bytes, frames: np.ndarray) -> str | None:
        """Decode one clip on its own; the error text if it fails. One probe pipeline serves every clip
        (fed with feed_input; ~20 ms a clip here); one that failed is rebuilt on the next call."""
        if self._probe_pipe is None:
            self._probe_pipe = probe_pipeline(decode_device=self._decode_device,
                                              **{**self._pipe_kwargs(1), "prefetch_queue_depth": 1})
            self._probe_pipe.build()
        try:
            self._probe_pipe.feed_input("encoded", [np.frombuffer(video, np.uint8)])
            self._probe_pipe.feed_input("frames", [frames])
            self._probe_pipe.run()
            return None
        except RuntimeError as e:  # DALI reports decoder failures as RuntimeError with the backend's text
            self._probe_pipe = None
            return _dali_reason(e)

    def _find_bad(self, items: list[PlanItem], steps: range, error: Exception) -> list[str]:
        """Read again the batches in flight, in plan order, and decode their not yet known-bad clips one by
        one, up to the end of the first batch with a failure (DALI mostly reports it at that batch); remember
        what fails (the next pipeline substitutes it) and return "<shard>: key <key>: <why>" for each. Under
        'raise' an unreadable sample is raised as it is (a SampleError). Later batches are left to the next
        pipeline: it fails again if one of them is bad."""
        found = []
        b = self.settings.batch_size
        for step in steps:
            clips = []
            for item in items[step * b:(step + 1) * b]:
                if (item.shard, item.index) in self._bad:
                    continue
                try:
                    meta, video = self.shards.read(item.shard, item.index)
                    clips.append((self.planner.spec(item, meta), video))
                except SampleError as e:
                    if self.settings.bad_sample == "raise":
                        raise
                    self._bad[item.shard, item.index] = e.reason
                    found.append(str(e))
            for spec, video in clips:
                reason = self._probe(video, spec.view.frame_indices)
                if reason is not None:
                    self._bad[spec.shard, spec.index] = f"cannot decode: {reason}"
                    found.append(f"{self.shards.files[spec.shard].path}: key {spec.key}: cannot decode: {reason}")
            if found:
                return found
        raise DataError(f"DALI failed on batch {steps.start} of epoch (rank {self.rank}) but no "
                        f"single sample fails alone: {error}") from error

    # -------------------------------------------------------------------------------- batches

    def _to_torch(self, output) -> torch.Tensor:
        if not self._gpu:
            return torch.from_numpy(output.as_array())
        from nvidia.dali.plugin.pytorch import feed_ndarray
        dense = output.as_tensor()
        tensor = torch.empty(dense.shape(), dtype=torch.float32, device=self.device)
        feed_ndarray(dense, tensor, cuda_stream=torch.cuda.current_stream(self.device))
        return tensor

    def _batches(self, items: list[PlanItem], epoch: int, start: int) -> Iterator[tuple[int, dict[str, Any]]]:
        n, step = len(items) // self.settings.batch_size, start
        while step < n:
            pending: dict[int, list[SampleSpec]] = {}
            pipe = self._take_kept(epoch, step) or self._pipeline(items, epoch, step, pending)
            try:
                while step < n:
                    (frames,) = pipe.run()
                    specs = pending.pop(step, None) or [s for s, _ in self._prepare(items, epoch, step, video=False)]
                    batch = batch_tensors(specs, self.heads)
                    batch["frames"] = self._to_torch(frames)
                    step += 1
                    yield step - 1, batch
                self._keep_for_next_epoch(pipe, epoch)
            except StopIteration as e:
                raise DataError(f"DALI pipeline ended early at batch {step} of {n}") from e
            except W3Error:
                raise
            except Exception as e:  # noqa: BLE001 -- a decoder failure (RuntimeError), or any error of a source
                # worker, which DALI re-raises as a bare Exception carrying the worker's traceback as text
                found = self._find_bad(items, range(step, min(n, step + IN_FLIGHT)), e)
                if self.settings.bad_sample == "raise":
                    raise DataError("undecodable sample(s): " + "; ".join(found)) from None
                # the next pipeline starts at `step` again and substitutes (and counts) what was found
            finally:
                del pipe

    # -------------------------------------------------------------------------------- one pipeline, many epochs

    def _take_kept(self, epoch: int, step: int):
        """The kept parallel-source pipeline if it serves exactly this: the start of ``epoch``, with the
        bad samples known now; else None (a kept one that does not fit is shut down)."""
        kept, self._kept = self._kept, None
        if kept is not None and (kept[1], step, kept[2]) == (epoch, 0, frozenset(self._bad)):
            return kept[0]
        return None

    def _keep_for_next_epoch(self, pipe, epoch: int) -> None:
        """After the last batch of a planned epoch, keep a parallel-source pipeline and its workers for the
        next epoch (spawning them again costs seconds). DALI continues a pipeline that is reset before its
        epoch ended where it stopped, so it is kept only once its source has said the epoch is over."""
        if not self.settings.py_workers or epoch == REPLAY_EPOCH:
            return
        try:
            pipe.run()          # a batch here would be a plan/source mismatch: then the pipeline is not kept
        except StopIteration:
            pipe.reset()
            self._kept = (pipe, epoch + 1, frozenset(self._bad))
        except Exception:  # noqa: BLE001 -- not kept; the next epoch builds a pipeline and meets any error there
            pass

    def close(self) -> None:
        self._kept = None
        super().close()
