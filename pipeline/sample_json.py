"""What a sample's `<key>.json` must be before anything is trained on it (docs/ARCHITECTURE.md §1): UTF-8
JSON of an object that names the sample's own key, with each head's label a class id of the manifest's
`heads` (or null on an unlabelled split). Both loaders and `shard.py verify` check samples with these;
the errors carry the reason only, and the caller adds the shard and key.
"""
from __future__ import annotations

import json
from typing import Any

from pipeline.errors import DataError


def label_field(head: str) -> str:
    """The JSON field of a head's label: `label`, or `<head>_class` (EPIC: `verb_class`, `noun_class`)."""
    return "label" if head == "label" else f"{head}_class"


def parse_meta(data: bytes, key: str) -> dict[str, Any]:
    """The JSON member as a dict; a DataError when it is not UTF-8, not JSON, not an object, or names
    another sample's key than `key` (the key the index or the tar gives its members)."""
    try:
        meta = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"metadata is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DataError(f"metadata is a JSON {type(meta).__name__}, not an object")
    if meta.get("key") != key:
        raise DataError(f"metadata names key {meta.get('key')!r}, the shard's index says {key!r}: the index "
                        f"does not belong to this tar, or the sample was written under another key")
    return meta


def head_labels(meta: dict[str, Any], heads: dict[str, int]) -> dict[str, int | None]:
    """head -> class id (None where the sample has no label); a DataError for a label that is not an
    integer within 0..count-1 of the manifest's `heads`."""
    labels: dict[str, int | None] = {}
    for head, count in heads.items():
        field = label_field(head)
        value = meta.get(field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < count):
            raise DataError(f"{field} {value!r} is not a class id of head {head!r} (0..{count - 1} by the "
                            f"manifest's heads)")
        labels[head] = value
    return labels
