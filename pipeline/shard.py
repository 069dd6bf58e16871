"""Repack a published video dataset into WebDataset shards (docs/ARCHITECTURE.md §1).

    python pipeline/shard.py --dataset sthv2 --root RAW --out shards --codec vp9 --workers 2
    python pipeline/shard.py verify shards/sthv2

Three steps, each resumable: (1) every source is read once and its clips are encoded into
`<out>/<dataset>/.work/clips/` (a clip is a whole file or absent); (2) once every clip is written or
rejected, the written keys of each split are shuffled with the recorded seed and cut into shards, and
that plan is saved; (3) each shard is written under a temporary name and renamed, and its checksum
recorded. A rerun keeps shards whose checksum matches and redoes the rest, so a run killed at any point
and rerun gives the same samples, keys, labels and order.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import sys
import time
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline import cli  # first: keeps pipeline/ off sys.path when run by path

from tqdm import tqdm

from pipeline.atomic import atomic_write, require_space
from pipeline.clips import ClipOutcome, clip_dir, is_done, meta_path, process_source, reject_path
from pipeline.datasets import NAMES, canonical_name, dataset_module, parse_dataset, present_splits
from pipeline.datasets.records import ClipRecord, DatasetIndex
from pipeline.errors import ConfigError, DataError, ResourceError
from pipeline.locking import FolderLock
from pipeline.manifest import MANIFEST, REJECTS, tool_version, verify
from pipeline.shard_writer import ShardInfo, index_tar, sha256_file, write_shard
from pipeline.transcode import CODECS, VIDEO_EXT, EncodeSettings

# Options that do not change the output; every other option is part of the shard set's identity.
NON_IDENTITY_OPTIONS = ("out", "workers", "max_reject_frac", "keep_clips", "progress")
COPY_DATASETS = ("sthv2",)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pipeline/shard.py", description=__doc__.split("\n\n")[0],
        epilog="`python pipeline/shard.py verify DIR` re-checks a finished shard set.")
    p.add_argument("--dataset", required=True, choices=NAMES, help="epic = epic100")
    p.add_argument("--root", required=True, type=Path, help="the dataset as its owners publish it")
    p.add_argument("--out", type=Path, default=Path("shards"), help="writes <out>/<dataset>/ (default shards)")
    p.add_argument("--codec", choices=CODECS, default="vp9",
                   help="h264: NVDEC; vp9/mjpeg: DALI CPU decoder too; copy: keep sthv2 webm bytes (default vp9)")
    p.add_argument("--short-side", type=int, default=256, help="downscale to this short side; 0 keeps (default 256)")
    p.add_argument("--fps", type=float, default=None, help="resample to this frame rate (default: the source's)")
    p.add_argument("--keyframe-interval", type=int, default=8, help="frames between keyframes (default 8)")
    p.add_argument("--quality", type=int, default=None, help="crf for h264/vp9, qscale for mjpeg")
    p.add_argument("--shard-size", type=int, default=500, help="samples per shard (default 500)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding processes")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample order across shards (recorded)")
    p.add_argument("--max-reject-frac", type=float, default=0.05,
                   help="exit non-zero when more than this fraction of the input is rejected (default 0.05)")
    p.add_argument("--splits", default=None,
                   help="comma-separated subset of train,val,test, each required (default: every split whose "
                        "annotation files are present; the others are skipped with a note)")
    p.add_argument("--label-convention", choices=("alphabetical", "file"), default=None,
                   help="sthv1 class ids: alphabetical (TSM/TRN, default) or the labels file's order")
    p.add_argument("--keep-clips", action="store_true", help="keep the per-clip work files after success")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


@dataclass
class SplitStats:
    input: int = 0
    written: int = 0
    rejected: int = 0
    shards: int = 0
    bytes: int = 0


@dataclass
class Job:
    """Everything one run needs, resolved from the command line."""

    dataset: str
    root: Path
    out_dir: Path
    settings: EncodeSettings
    options: dict[str, Any]
    workers: int
    seed: int
    shard_size: int
    max_reject_frac: float
    progress: bool
    keep_clips: bool
    splits: tuple[str, ...]                     # the splits to write
    skipped_splits: dict[str, str]              # every other split of the dataset -> why it is not written

    @property
    def work(self) -> Path:
        return self.out_dir / ".work"


def make_job(args: argparse.Namespace) -> tuple[Job, dict[str, Any]]:
    dataset = canonical_name(args.dataset)
    if args.codec == "copy" and dataset not in COPY_DATASETS:
        raise ConfigError(f"--codec copy keeps source video bytes, which only {', '.join(COPY_DATASETS)} has "
                          f"in a usable form; use h264, vp9 or mjpeg for {dataset}")
    if args.codec == "copy" and args.fps:
        raise ConfigError("--fps needs a transcode; it cannot be combined with --codec copy")
    for name, value, low in (("--shard-size", args.shard_size, 1), ("--workers", args.workers, 1),
                             ("--keyframe-interval", args.keyframe_interval, 1), ("--short-side", args.short_side, 0)):
        if value < low:
            raise ConfigError(f"{name} must be >= {low}, got {value}")
    if args.fps is not None and args.fps <= 0:
        raise ConfigError(f"--fps must be positive, got {args.fps}")
    if not 0.0 <= args.max_reject_frac <= 1.0:
        raise ConfigError(f"--max-reject-frac must be within 0..1, got {args.max_reject_frac}")
    dataset_options: dict[str, Any] = {}
    if args.label_convention is not None:
        if dataset != "sthv1":
            raise ConfigError(f"--label-convention applies to sthv1 only, not {dataset}")
        dataset_options["label_convention"] = args.label_convention
    elif dataset == "sthv1":
        dataset_options["label_convention"] = "alphabetical"
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    options["dataset"], options["root"] = dataset, str(Path(args.root).resolve())
    options.update(dataset_options)
    settings = EncodeSettings(args.codec, args.short_side, args.fps, args.keyframe_interval, args.quality)
    splits, skipped = choose_splits(dataset, Path(args.root), args.splits)
    job = Job(dataset, Path(args.root), Path(args.out) / dataset, settings, options, args.workers, args.seed,
              args.shard_size, args.max_reject_frac, args.progress, args.keep_clips, splits, skipped)
    return job, dataset_options


def choose_splits(dataset: str, root: Path, listed: str | None) -> tuple[tuple[str, ...], dict[str, str]]:
    """The splits to write and, for each other split of the dataset, why not. `--splits` is strict (the
    parser fails on a missing file); without it, every split whose annotation files are present, and an
    error naming every place looked for when there is none."""
    if listed:
        splits = tuple(listed.split(","))
        return splits, {s: "not in --splits" for s in dataset_module(dataset).SPLITS if s not in splits}
    splits, absent = present_splits(dataset, root)
    if not splits:
        where = f"{root}" if root.is_dir() else f"{root} (no such folder)"
        raise ResourceError(f"no split of {dataset} has its annotation files under {where}:\n"
                            + "\n".join(f"  {split}: {reason}" for split, reason in absent.items()))
    for split, reason in absent.items():
        print(f"{dataset}: skipping split {split}: {reason}", file=sys.stderr)
    return splits, absent


def identity(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in NON_IDENTITY_OPTIONS}


def claim_output(job: Job) -> None:
    """Refuse to mix runs: an output folder made with other options is an error, not a resume."""
    job.work.mkdir(parents=True, exist_ok=True)
    path = job.work / "options.json"
    # the splits found are part of the identity: a file added or removed since is another shard set
    mine = {**identity(job.options), "resolved_splits": list(job.splits)}
    if path.is_file():
        theirs = json.loads(path.read_text())
        if theirs != mine:
            diff = ", ".join(f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}"
                             for k in sorted(set(theirs) | set(mine)) if theirs.get(k) != mine.get(k))
            raise ConfigError(f"{job.out_dir} holds shards made with other options ({diff}); "
                              f"use another --out or delete that folder")
    else:
        atomic_write(path, json.dumps(mine, indent=1, sort_keys=True).encode())


def remove_partials(job: Job) -> None:
    """Temporary files of a killed run (`.<name>.tmp<pid>`): never read, so just cleared."""
    for folder in [job.out_dir, job.work, *(p for p in job.out_dir.iterdir() if p.is_dir())]:
        for path in folder.glob(".*.tmp*"):
            path.unlink(missing_ok=True)
    for path in (job.work / "clips").glob("*/.*.tmp*"):
        path.unlink(missing_ok=True)


def _encode_task(task: tuple[list[ClipRecord], Path, EncodeSettings, Path]) -> list[ClipOutcome]:
    return process_source(*task)


def encode_clips(job: Job, records: list[ClipRecord]) -> None:
    """Step 1: every clip of `records` written or rejected in the work folder, sources in parallel."""
    todo = [r for r in records if not is_done(job.work, r)]
    if not todo:
        return
    by_source: dict[Path, list[ClipRecord]] = {}
    for rec in todo:
        by_source.setdefault(rec.source, []).append(rec)
    groups = sorted(by_source.values(), key=lambda g: (-len(g), str(g[0].source)))
    tasks = [(g, job.root, job.settings, job.work) for g in groups]
    start, nbytes = time.monotonic(), 0
    bar = tqdm(total=len(todo), unit="clip", desc=f"{job.dataset} encode", disable=not job.progress,
               mininterval=0.5, dynamic_ncols=True, file=sys.stderr)
    pool = None
    try:
        if job.workers > 1 and len(tasks) > 1:
            workers = min(job.workers, len(tasks))
            pool = multiprocessing.get_context("fork").Pool(workers)
            # many one-clip sources (sthv2): hand them out a few at a time to save round trips
            chunk = max(1, min(16, len(tasks) // (8 * workers)))
            results = pool.imap_unordered(_encode_task, tasks, chunksize=chunk)
        else:
            results = map(_encode_task, tasks)
        for outcomes in results:
            nbytes += sum(o.bytes for o in outcomes)
            bar.update(len(outcomes))
            bar.set_postfix_str(f"{nbytes / 1e6 / max(time.monotonic() - start, 1e-9):.2f} MB/s", refresh=False)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()


def plan_shards(job: Job, index: DatasetIndex) -> dict[str, Any]:
    """Step 2: the written keys of each split, shuffled with the seed, cut into shards; saved once."""
    path = job.work / "plan.json"
    if path.is_file():
        return json.loads(path.read_text())
    plan: dict[str, Any] = {"seed": job.seed, "splits": {}, "rejects": []}
    for split, records in index.records.items():
        written = sorted(r.key for r in records if meta_path(job.work, r).is_file())
        for rec in records:
            if not meta_path(job.work, rec).is_file():
                plan["rejects"].append(json.loads(reject_path(job.work, rec).read_text()))
        random.Random(f"{job.seed}:{split}").shuffle(written)
        plan["splits"][split] = [written[i:i + job.shard_size] for i in range(0, len(written), job.shard_size)]
    atomic_write(path, json.dumps(plan).encode())
    return plan


def shard_name(dataset: str, split: str, n: int) -> str:
    return f"{dataset}-{split}-{n:06d}.tar"


def finished_shard(job: Job, split: str, n: int, keys: list[str]) -> ShardInfo | None:
    """The recorded shard if its tar is there with the checksum recorded when it was written. Its index
    and member checksums are rewritten from the tar when they are missing or changed (or the shard was
    written before checksums existed): the tar's sha256 vouches for its bytes."""
    state = job.work / "shards" / f"{split}-{n:06d}.json"
    tar = job.out_dir / split / shard_name(job.dataset, split, n)
    if not (state.is_file() and tar.is_file()):
        return None
    recorded = json.loads(state.read_text())
    if recorded["keys"] != keys or tar.stat().st_size != recorded["bytes"] or sha256_file(tar) != recorded["sha256"]:
        return None
    fields = {f.name for f in dataclasses.fields(ShardInfo)}
    info = ShardInfo(**{k: recorded[k] for k in fields}) if fields <= set(recorded) else None
    if info is None or any(not path.is_file() or sha256_file(path) != sha for path, sha in (
            (job.out_dir / info.index, info.index_sha256), (job.out_dir / info.checksums, info.checksums_sha256))):
        info = index_tar(tar, job.out_dir, recorded["sha256"])
        atomic_write(state, json.dumps({**asdict(info), "keys": keys}).encode())
    return info


def _sample_members(job: Job, split: str, key: str) -> list[tuple[str, bytes]]:
    folder = clip_dir(job.work, split)
    meta = json.loads((folder / f"{key}.json").read_text())
    ext = meta.pop("video_ext")
    return [(ext, (folder / f"{key}.{ext}").read_bytes()),
            ("json", json.dumps(meta, sort_keys=True).encode())]


def write_shards(job: Job, index: DatasetIndex, plan: dict[str, Any]) -> dict[str, list[ShardInfo]]:
    """Step 3: keep verified shards, (re)write the others, re-encoding clips removed by a past cleanup."""
    by_key = {r.key: r for records in index.records.values() for r in records}
    done: dict[str, list[ShardInfo]] = {}
    (job.work / "shards").mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=sum(len(v) for v in plan["splits"].values()), unit="shard", desc=f"{job.dataset} shards",
               disable=not job.progress, mininterval=0.5, dynamic_ncols=True, file=sys.stderr)
    for split, shards in plan["splits"].items():
        (job.out_dir / split).mkdir(parents=True, exist_ok=True)
        done[split] = []
        for n, keys in enumerate(shards):
            info = finished_shard(job, split, n, keys)
            if info is None:
                missing = [by_key[k] for k in keys if not meta_path(job.work, by_key[k]).is_file()]
                if missing:
                    encode_clips(job, missing)
                    failed = [r.key for r in missing if not meta_path(job.work, r).is_file()]
                    if failed:
                        raise DataError(f"clips {', '.join(failed[:5])} wrote before but fail now; delete "
                                        f"{job.out_dir} and rerun")
                tar = job.out_dir / split / shard_name(job.dataset, split, n)
                require_space(tar, _shard_bytes(job, split, keys), "a shard")
                info = write_shard(tar, ((k, _sample_members(job, split, k)) for k in keys), job.out_dir)
                state = {**asdict(info), "keys": keys}
                atomic_write(job.work / "shards" / f"{split}-{n:06d}.json", json.dumps(state).encode())
            done[split].append(info)
            bar.update(1)
        _remove_stale(job, split, len(shards))
    bar.close()
    return done


def _shard_bytes(job: Job, split: str, keys: list[str]) -> int:
    """About the size of the tar: its members plus a header and padding per member, and the index."""
    folder, ext = clip_dir(job.work, split), VIDEO_EXT[job.settings.codec]
    return sum((folder / f"{k}.{e}").stat().st_size + 1024 for k in keys for e in (ext, "json")) + 100 * len(keys)


def _remove_stale(job: Job, split: str, count: int) -> None:
    """Shard files beyond the plan (left by an interrupted run of an earlier plan) would be read as data."""
    for path in (job.out_dir / split).glob(f"{job.dataset}-{split}-*"):
        stem = path.name.split(".")[0]
        number = stem.rsplit("-", 1)[-1]
        if number.isdigit() and int(number) >= count:
            path.unlink()


def write_rejects(job: Job, index: DatasetIndex, plan: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{**r.as_json(), "key": None} for r in index.rejects] + plan["rejects"]
    rows.sort(key=lambda r: (r["split"], r["id"], r["reason"]))
    atomic_write(job.out_dir / REJECTS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())
    return rows


def write_manifest(job: Job, index: DatasetIndex, shards: dict[str, list[ShardInfo]], rejects: int) -> dict:
    manifest = {
        "dataset": job.dataset,
        "tool_version": tool_version(),
        "options": job.options,
        "seed": job.seed,
        "codec": job.settings.codec,
        "video_ext": VIDEO_EXT[job.settings.codec],
        "heads": index.heads,
        "classes": index.classes,
        **index.extra,
        "splits": {split: {"num_samples": sum(s.samples for s in infos), "shards": [asdict(s) for s in infos]}
                   for split, infos in shards.items()},
        "skipped_splits": job.skipped_splits,
        "rejects": {"count": rejects, "file": REJECTS},
    }
    atomic_write(job.out_dir / MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest


def account(job: Job, index: DatasetIndex, shards: dict[str, list[ShardInfo]], rejects: list[dict]) -> int:
    """Print the summary table and check input = written + rejected; returns the exit status."""
    stats = {s: SplitStats() for s in index.records}
    for split, records in index.records.items():
        stats[split].input += len(records)
    for rej in index.rejects:
        stats.setdefault(rej.split, SplitStats()).input += 1
    for row in rejects:
        stats.setdefault(row["split"], SplitStats()).rejected += 1
    for split, infos in shards.items():
        stats[split].written = sum(s.samples for s in infos)
        stats[split].shards, stats[split].bytes = len(infos), sum(s.bytes for s in infos)
    total = SplitStats(*(sum(getattr(s, f) for s in stats.values()) for f in ("input", "written", "rejected",
                                                                            "shards", "bytes")))
    print(f"\n{'split':<8}{'input':>9}{'written':>9}{'rejected':>10}{'shards':>8}{'MB':>10}")
    for name, s in [*stats.items(), ("total", total)]:
        print(f"{name:<8}{s.input:>9}{s.written:>9}{s.rejected:>10}{s.shards:>8}{s.bytes / 1e6:>10.1f}")
    ok = total.input == total.written + total.rejected and all(
        s.input == s.written + s.rejected for s in stats.values())
    print(f"input = written + rejected: {total.input} = {total.written} + {total.rejected} "
          f"({'ok' if ok else 'MISMATCH'})")
    print(f"shards in {job.out_dir} (sample order shuffled with seed {job.seed}); "
          f"rejects listed in {job.out_dir / REJECTS}")
    if job.skipped_splits:
        print(f"splits not written: {', '.join(job.skipped_splits)} (why: skipped_splits in "
              f"{job.out_dir / MANIFEST})")
    if not ok:
        raise DataError("some inputs were neither written nor rejected; this is a bug, please report it")
    frac = total.rejected / total.input if total.input else 0.0
    if frac > job.max_reject_frac:
        print(f"{total.rejected} of {total.input} inputs rejected ({frac:.1%}), more than --max-reject-frac "
              f"{job.max_reject_frac:g}; reasons in {job.out_dir / REJECTS}", file=sys.stderr)
        return cli.EXIT_FINDINGS
    return cli.EXIT_OK


def run(args: argparse.Namespace) -> int:
    job, dataset_options = make_job(args)
    index = parse_dataset(job.dataset, job.root, job.splits, **dataset_options)
    with FolderLock(job.out_dir, what="--out"):      # one run per output folder
        return _write(job, index)


def _write(job: Job, index: DatasetIndex) -> int:
    claim_output(job)
    remove_partials(job)
    if not (job.work / "plan.json").is_file():
        encode_clips(job, [r for records in index.records.values() for r in records])
    plan = plan_shards(job, index)
    shards = write_shards(job, index, plan)
    rejects = write_rejects(job, index, plan)
    write_manifest(job, index, shards, len(rejects))
    if not job.keep_clips:
        shutil.rmtree(job.work / "clips", ignore_errors=True)
    return account(job, index, shards, rejects)


def verify_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pipeline/shard.py verify",
                                description="Re-check checksums and decode a sample of clips of a shard set.")
    p.add_argument("dir", type=Path, help="<out>/<dataset>, the folder holding manifest.json")
    p.add_argument("--decode-per-shard", type=int, default=2)
    args = p.parse_args(argv)
    problems = verify(args.dir, args.decode_per_shard)
    for line in problems:
        print(f"FAIL {line}")
    print(f"{args.dir}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
    return cli.EXIT_FINDINGS if problems else cli.EXIT_OK


@cli.tool("pipeline/shard.py")
def main(argv: list[str] | None = None) -> int:
    """Exit status (pipeline.cli): 0 ok, 1 too many rejects or a failed verify, 2 an error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["verify"]:
        return verify_main(argv[1:])
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
