"""The shard set's manifest (docs/ARCHITECTURE.md §1) and the `verify` check of a finished shard set."""
from __future__ import annotations

import json
import random
import shlex
import tarfile
import zlib
from importlib import metadata
from pathlib import Path
from typing import Any

import av

from pipeline.datasets import NAMES as DATASET_NAMES
from pipeline.errors import DataError, ResourceError
from pipeline.sample_json import head_labels, parse_meta
from pipeline.shard_writer import read_checksums, read_index, sha256_file
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


def shard_command(options: dict[str, Any]) -> str:
    """The `pipeline/shard.py` command line a manifest's `options` were recorded from (to rerun it)."""
    words = ["python", "pipeline/shard.py"]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if name == "progress":
            words += [] if value else ["--no-progress"]
        elif isinstance(value, bool):
            words += [flag] if value else []
        elif value is not None:
            words += [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)


def verify(shards_dir: Path, decode_per_shard: int = 2, seed: int = 0) -> list[str]:
    """Re-check every shard as the loaders will read it: the tar's size and sha256; that its index gives
    each member's true offset and size and is the one written with it; every member's CRC-32; every
    sample's JSON (UTF-8, its own key, labels within the manifest's class counts); and decode a few clips
    of each shard (their frame count must match their JSON). Returns the problems found; empty is good."""
    shards_dir = Path(shards_dir)
    manifest = read_manifest(shards_dir)
    heads = dict(manifest.get("heads", {}))
    problems: list[str] = []
    rng = random.Random(seed)
    entries = [shard for entry in manifest["splits"].values() for shard in entry["shards"]]
    if any("checksums" not in shard for shard in entries):
        problems.append(f"{shards_dir / MANIFEST}: written before member checksums existed; rerun the command "
                        f"that wrote it to add them: {shard_command(manifest.get('options', {}))}")
    for split, entry in manifest["splits"].items():
        for shard in entry["shards"]:
            problems.extend(_check_shard(shards_dir, shard, heads, decode_per_shard, rng))
        total = sum(shard["samples"] for shard in entry["shards"])
        if total != entry["num_samples"]:
            problems.append(f"split {split}: shards hold {total} samples, {MANIFEST} says {entry['num_samples']}")
    return problems


def _check_shard(shards_dir: Path, shard: dict, heads: dict[str, int], count: int, rng: random.Random) -> list[str]:
    tar_path = shards_dir / shard["file"]
    if not tar_path.is_file():
        return [f"{tar_path}: missing"]
    if tar_path.stat().st_size != shard["bytes"] or sha256_file(tar_path) != shard["sha256"]:
        return [f"{tar_path}: size or sha256 differs from {MANIFEST}"]
    chosen = set(rng.sample(range(shard["samples"]), min(count, shard["samples"])))
    with tarfile.open(tar_path) as tar:
        members: dict[str, dict[str, tarfile.TarInfo]] = {}
        for member in tar:
            key, ext = member.name.split(".", 1)
            members.setdefault(key, {})[ext] = member
        layout = [(key, {e: (m.offset_data, m.size) for e, m in parts.items()}) for key, parts in members.items()]
        problems = _check_index(tar_path, shards_dir / shard["index"], shard, layout)
        crcs: dict[str, dict[str, int]] = {}
        if "checksums" in shard:
            found, crcs = _read_checksums(tar_path, shards_dir / shard["checksums"], shard, list(members))
            problems += found
        for i, (key, parts) in enumerate(members.items()):      # one sample in memory at a time
            data = {ext: tar.extractfile(m).read() for ext, m in parts.items()}
            if key in crcs and crcs[key] != {ext: zlib.crc32(value) for ext, value in data.items()}:
                problems.append(f"{tar_path}: sample {key}: its members fail their CRC-32 check")
            problems += _check_sample(tar_path, key, data, heads, decode=i in chosen)
    return problems


def _check_index(tar_path: Path, idx_path: Path, shard: dict, layout: list) -> list[str]:
    """The index must give the tar's true member offsets (DALI and our loaders read by them) and be the
    file written with the shard."""
    if not idx_path.is_file():
        return [f"{idx_path}: missing"]
    try:
        index = read_index(idx_path)
    except DataError as exc:
        return [str(exc)]
    if len(index) != shard["samples"]:
        return [f"{idx_path}: sample count differs from {MANIFEST}"]
    if index != layout:
        return [f"{idx_path}: member offsets differ from {tar_path.name}'s; recreate it with "
                f"`wds2idx {tar_path} {idx_path}`"]
    if "index_sha256" in shard and sha256_file(idx_path) != shard["index_sha256"]:
        return [f"{idx_path}: sha256 differs from {MANIFEST} (not the index written with the shard)"]
    return []


def _read_checksums(tar_path: Path, sums_path: Path, shard: dict, keys: list[str]
                    ) -> tuple[list[str], dict[str, dict[str, int]]]:
    """(problems, key -> ext -> CRC-32): the checksums file must be the one written with the shard and
    list the tar's samples in the tar's order."""
    if not sums_path.is_file():
        return [f"{sums_path}: missing"], {}
    problems = []
    if sha256_file(sums_path) != shard["checksums_sha256"]:
        problems.append(f"{sums_path}: sha256 differs from {MANIFEST}")
    try:
        sums = read_checksums(sums_path)
    except DataError as exc:
        return problems + [str(exc)], {}
    if [key for key, _ in sums] != keys:
        return problems + [f"{sums_path}: lists other samples, or another order, than {tar_path.name}"], {}
    return problems, dict(sums)


def _check_sample(tar_path: Path, key: str, parts: dict[str, bytes], heads: dict[str, int], decode: bool
                  ) -> list[str]:
    video = [e for e in parts if e != "json"]
    if "json" not in parts or len(video) != 1:
        return [f"{tar_path}: sample {key} has members {sorted(parts)}"]
    try:
        meta = parse_meta(parts["json"], key)
        head_labels(meta, heads)
    except DataError as exc:
        return [f"{tar_path}: sample {key}: {exc}"]
    if not decode:
        return []
    try:
        frames = frames_to_array(parts[video[0]])
    except av.FFmpegError as exc:
        return [f"{tar_path}: sample {key} does not decode ({exc})"]
    if len(frames) != meta.get("num_frames"):
        return [f"{tar_path}: sample {key} decodes to {len(frames)} frames, its JSON says {meta.get('num_frames')}"]
    return []
