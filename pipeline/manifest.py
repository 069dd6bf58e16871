"""The shard set's manifest (docs/ARCHITECTURE.md §1) and the `verify` check of a finished shard set."""
from __future__ import annotations

import json
import random
import tarfile
from importlib import metadata
from pathlib import Path
from typing import Any

import av

from pipeline.datasets import NAMES as DATASET_NAMES
from pipeline.errors import DataError, ResourceError
from pipeline.shard_writer import read_index, sha256_file
from pipeline.transcode import frames_to_array

MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"


def tool_version() -> str:
    try:
        own = metadata.version("w3video")
    except metadata.PackageNotFoundError:
        own = "unknown"
    return f"w3video {own}; PyAV {av.__version__}; libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}"


def read_manifest(shards_dir: Path) -> dict[str, Any]:
    shards_dir = Path(shards_dir)
    path = shards_dir / MANIFEST
    if not path.is_file():
        dataset = shards_dir.name if shards_dir.name in DATASET_NAMES else "<DATASET>"
        raise ResourceError(f"no shards at {shards_dir} ({path} not found). Make them with: python "
                            f"pipeline/shard.py --dataset {dataset} --root <RAW_DIR> --out {shards_dir.parent}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from exc


def verify(shards_dir: Path, decode_per_shard: int = 2, seed: int = 0) -> list[str]:
    """Re-check every shard's size and sha256, that its index gives each member's true offset and size
    (loaders read by those), and decode a few clips of each shard (their frame count must match their
    JSON). Returns the problems found; empty means good."""
    shards_dir = Path(shards_dir)
    manifest = read_manifest(shards_dir)
    problems: list[str] = []
    rng = random.Random(seed)
    for split, entry in manifest["splits"].items():
        total = 0
        for shard in entry["shards"]:
            tar_path, idx_path = shards_dir / shard["file"], shards_dir / shard["index"]
            total += shard["samples"]
            if not tar_path.is_file():
                problems.append(f"{tar_path}: missing")
                continue
            if tar_path.stat().st_size != shard["bytes"] or sha256_file(tar_path) != shard["sha256"]:
                problems.append(f"{tar_path}: size or sha256 differs from {MANIFEST}")
                continue
            index = None
            if not idx_path.is_file():
                problems.append(f"{idx_path}: missing")
            else:
                try:
                    index = read_index(idx_path)
                except DataError as exc:
                    problems.append(str(exc))
                if index is not None and len(index) != shard["samples"]:
                    problems.append(f"{idx_path}: sample count differs from {MANIFEST}")
                    index = None
            problems.extend(_check_members(tar_path, idx_path, index, shard["samples"], decode_per_shard, rng))
        if total != entry["num_samples"]:
            problems.append(f"split {split}: shards hold {total} samples, {MANIFEST} says {entry['num_samples']}")
    return problems


def _check_members(tar_path: Path, idx_path: Path, index: list | None, samples: int, count: int,
                   rng: random.Random) -> list[str]:
    chosen = set(rng.sample(range(samples), min(count, samples)))
    problems: list[str] = []
    members: dict[str, dict[str, tarfile.TarInfo]] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            key, ext = member.name.split(".", 1)
            members.setdefault(key, {})[ext] = member
        layout = [(key, {e: (m.offset_data, m.size) for e, m in parts.items()}) for key, parts in members.items()]
        if index is not None and index != layout:
            problems.append(f"{idx_path}: member offsets differ from {tar_path.name}'s; recreate it with "
                            f"`wds2idx {tar_path} {idx_path}`")
        for i, (key, parts) in enumerate(members.items()):
            if i not in chosen:
                continue
            meta = json.loads(tar.extractfile(parts["json"]).read())
            video = [e for e in parts if e != "json"]
            if len(video) != 1:
                problems.append(f"{tar_path}: sample {key} has members {sorted(parts)}")
                continue
            try:
                frames = frames_to_array(tar.extractfile(parts[video[0]]).read())
            except av.FFmpegError as exc:
                problems.append(f"{tar_path}: sample {key} does not decode ({exc})")
                continue
            if len(frames) != meta["num_frames"]:
                problems.append(f"{tar_path}: sample {key} decodes to {len(frames)} frames, "
                                f"its JSON says {meta['num_frames']}")
    return problems

