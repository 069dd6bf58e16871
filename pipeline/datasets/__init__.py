"""Parsers for the owners' published layouts: one module per dataset, each with
`parse(root, splits, **options) -> DatasetIndex`, `SPLITS` (the splits it has), `OPTIONS` (its own
settings with their defaults, recorded in the shard manifest) and `SPLIT_FILES`: split -> the annotation
files that split needs, each file as a tuple of candidate names (found by `files.find_file`), or None when
the splits do not come from separate files (every split is then always there). The parser reads its
split files through `SPLIT_FILES` too, so each name is written once."""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline.datasets.files import find_file, not_found
from pipeline.datasets.records import ClipRecord, DatasetIndex, Reject
from pipeline.errors import ConfigError

# name -> module; `epic` is the name users know EPIC-Kitchens-100 by.
MODULES = {"sthv1": "sthv1", "sthv2": "sthv2", "egogesture": "egogesture", "epic55": "epic55",
           "epic100": "epic100"}
ALIASES = {"epic": "epic100"}
NAMES = tuple(MODULES) + tuple(ALIASES)


def canonical_name(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in MODULES:
        raise ConfigError(f"--dataset {name!r} is not one of {', '.join(NAMES)}")
    return name


def dataset_module(name: str) -> ModuleType:
    return importlib.import_module(f"pipeline.datasets.{MODULES[canonical_name(name)]}")


def parse_dataset(name: str, root: Path, splits: tuple[str, ...] | None = None, **options: Any) -> DatasetIndex:
    """Parse `root` as dataset `name`; `splits` defaults to every split the dataset has."""
    module = dataset_module(name)
    splits = tuple(splits or module.SPLITS)
    unknown = [s for s in splits if s not in module.SPLITS]
    if unknown:
        raise ConfigError(f"--splits {','.join(unknown)}: {canonical_name(name)} has only {','.join(module.SPLITS)}")
    bad = [k for k in options if k not in getattr(module, "OPTIONS", {})]
    if bad:
        raise ConfigError(f"option(s) {', '.join(bad)} do not apply to {canonical_name(name)}")
    return module.parse(Path(root), splits, **options)


def present_splits(name: str, root: Path) -> tuple[tuple[str, ...], dict[str, str]]:
    """The splits of dataset `name` whose annotation files are all under `root` (in the dataset's split
    order), and split -> why it is absent, naming every place looked for the first file not found."""
    module = dataset_module(name)
    if module.SPLIT_FILES is None:
        return tuple(module.SPLITS), {}
    present, absent = [], {}
    for split in module.SPLITS:
        missing = next((names for names in module.SPLIT_FILES[split]
                        if find_file(Path(root), names, required=False) is None), None)
        if missing is None:
            present.append(split)
        else:
            absent[split] = not_found(Path(root), missing)
    return tuple(present), absent


__all__ = ["ClipRecord", "DatasetIndex", "Reject", "NAMES", "canonical_name", "dataset_module", "parse_dataset",
           "present_splits"]
