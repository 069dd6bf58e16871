"""Finding and reading the owners' annotation files, with errors that name the file and the line."""
from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import DataError, ResourceError

# Where people keep the annotation files relative to the dataset root: the root itself, or the folder
# name the owners' download or annotation repository gives them.
ANNOTATION_DIRS = ("", "labels", "annotations")


def candidate_paths(root: Path, names: Sequence[str], subdirs: Sequence[str] = ANNOTATION_DIRS) -> list[Path]:
    """Every place an annotation file called one of `names` may be, in the order they are tried."""
    return [root / sub / name if sub else root / name for sub in subdirs for name in names]


def not_found(root: Path, names: Sequence[str], subdirs: Sequence[str] = ANNOTATION_DIRS) -> str:
    """Why `find_file` found nothing: the message names every place tried."""
    return f"annotation file not found; looked for: {', '.join(map(str, candidate_paths(root, names, subdirs)))}"


def find_file(root: Path, names: Sequence[str], subdirs: Sequence[str] = ANNOTATION_DIRS,
              required: bool = True) -> Path | None:
    """The first of `names` found in `root/<subdir>`; a ResourceError listing every place tried."""
    for path in candidate_paths(root, names, subdirs):
        if path.is_file():
            return path
    if required:
        raise ResourceError(not_found(root, names, subdirs))
    return None


def find_dir(root: Path, names: Sequence[str]) -> Path:
    """The first existing folder among `root/<name>` ('' = root); ResourceError naming them all."""
    for name in names:
        path = root / name if name else root
        if path.is_dir():
            return path
    raise ResourceError(f"data folder not found; looked for: {', '.join(str(root / n) for n in names)}")


def read_json(path: Path) -> Any:
    """json.load with CRLF/LF and a BOM accepted, and a DataError naming file and line on bad syntax."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg} (column {exc.colno})") from exc


def read_csv_rows(path: Path, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for every row, the header included; CRLF, LF and a missing last newline."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            for fields in reader:
                yield reader.line_num, fields
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc


def read_csv_dicts(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row as dict) under the file's header; DataError when a required column is absent
    or a row has the wrong number of fields."""
    rows = read_csv_rows(path)
    try:
        _, header = next(rows)
    except StopIteration:
        raise DataError(f"{path}:1: empty file, expected a header with {', '.join(required)}") from None
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}:1: header lacks column(s) {', '.join(missing)} (has {', '.join(header)})")
    for line, fields in rows:
        if not fields:
            continue
        if len(fields) != len(header):
            raise DataError(f"{path}:{line}: {len(fields)} fields, the header has {len(header)}")
        yield line, dict(zip(header, fields))


def parse_int(value: str, path: Path, line: int, column: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{path}:{line}: column {column!r} is {value!r}, expected an integer") from None
