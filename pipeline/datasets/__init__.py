"""Parsers for the owners' published layouts: one module per dataset, each with
`parse(root, splits, **options) -> DatasetIndex`, `SPLITS` (the splits it has) and `OPTIONS` (its own
settings with their defaults, recorded in the shard manifest)."""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

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


__all__ = ["ClipRecord", "DatasetIndex", "Reject", "NAMES", "canonical_name", "dataset_module", "parse_dataset"]
