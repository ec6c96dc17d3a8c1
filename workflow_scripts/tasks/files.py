"""Reading dataset files for the loaders: each file read is recorded (path -> SHA-256) for the table's
provenance; rows of JSON lines and Parquet; and the cells of a row, checked, with errors naming the file,
the row and the key."""
from __future__ import annotations

import bz2
import gzip
import json
import lzma
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..tables import DatasetError, file_digest

BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")  # what separates paragraphs


# ---------------------------------------------------------------- files


def require(dataset: dict, key: str):
    """``dataset[key]``; a DatasetError naming the format and the key where it is not given."""
    if key not in dataset:
        raise DatasetError(f"dataset format {dataset.get('format')!r} needs the key {key!r}")
    return dataset[key]


def record_file(path: Path, read: dict) -> Path:
    """Note `path` and its SHA-256 in `read`; an empty file is an error."""
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: file is empty")
    read[str(path)] = file_digest(path)
    return path


def short_names(files: list[Path]) -> dict[Path, str]:
    """Short stable names for files: their paths relative to the folder they share."""
    root = os.path.commonpath([str(p.parent) for p in files])
    return {p: p.relative_to(root).as_posix() for p in files}


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc})") from exc


def open_text(path: Path):
    """A text file, decompressed by its suffix (.gz, .bz2, .xz, .zst)."""
    if path.suffix == ".zst":
        import zstandard

        return zstandard.open(path, "rt", encoding="utf-8")
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix, open)
    return opener(path, "rt", encoding="utf-8")


def json_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(row, object) for each line of a JSON-lines file, the row being the line number (blank lines
    are skipped); a line that is not a JSON object is an error naming its row."""
    try:
        with open_text(path) as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}: row {n}: invalid JSON ({exc.msg}, column {exc.colno})") from exc
                if not isinstance(row, dict):
                    raise DatasetError(f"{path}: row {n}: expected a JSON object, found {short_repr(row)}")
                yield n, row
    except DatasetError:
        raise
    except Exception as exc:  # undecodable bytes, a broken archive: the file cannot be read
        raise DatasetError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc


def read_rows(path: Path, columns: list[str]) -> Iterator[tuple[int, dict]]:
    """(row, record) of a whole .parquet file or, line by line, a JSON-lines file (.jsonl,
    optionally compressed); `columns` must exist (in every row of JSON lines)."""
    if ".parquet" not in path.suffixes:
        for n, row in json_rows(path):
            missing = [c for c in columns if c not in row]
            if missing:
                raise DatasetError(f"{path}: row {n}: missing key(s) {missing}; found {sorted(row)}")
            yield n, row
        return
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow's errors for a file that is no Parquet
        raise DatasetError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    yield from enumerate(frame.to_dict("records"), start=1)


def column_values(path: Path, column: str) -> Iterator[tuple[int, object]]:
    """(row, value) of one column of a .parquet or JSON-lines file, in file order, read in chunks."""
    if ".parquet" in path.suffixes:
        try:
            parquet = pq.ParquetFile(path)
        except Exception as exc:
            raise DatasetError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc
        if column not in parquet.schema_arrow.names:
            raise DatasetError(f"{path}: no column {column!r}; found {parquet.schema_arrow.names}")
        n = 0
        for batch in parquet.iter_batches(columns=[column]):
            for value in batch.column(0).to_pylist():
                n += 1
                yield n, value
        return
    for n, row in json_rows(path):
        if column not in row:
            raise DatasetError(f"{path}: row {n}: no key {column!r}; found {sorted(row)}")
        yield n, row[column]


# ---------------------------------------------------------------- cells


def short_repr(value) -> str:
    """A value as messages show it: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_null(value) -> bool:
    """Whether a cell holds no value: None (a missing JSON key) or NaN (a missing Parquet value)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def string_cell(path: Path, n: int, row: dict, key: str, *, empty: bool = False) -> str:
    """The text of ``row[key]``; DatasetError naming file, row and key unless it is a (non-empty) string."""
    value = row.get(key)
    if isinstance(value, str) and (empty or value.strip()):
        return value
    raise DatasetError(f"{path}: row {n}: {key} must be a {'string' if empty else 'non-empty string'}, "
                       f"found {short_repr(value)}")


def string_list(path: Path, n: int, key: str, value) -> list[str]:
    """An optional list of strings (a lone string is one; missing is none)."""
    if is_null(value):
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise DatasetError(f"{path}: row {n}: {key} must be a string or a list of strings, found {short_repr(value)}")
