"""Parquet tables written atomically, with the provenance of what made them in their metadata."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

PROVENANCE_KEY = b"calibration"
_PACKAGES = ("torch", "transformers", "pandas", "pyarrow", "numpy", "huggingface_hub", "snakemake")


def package_versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers (missing ones are skipped)."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_table(df: pd.DataFrame, path: str | os.PathLike, provenance: dict | None = None) -> None:
    """Write `df` to Parquet at `path` atomically; `provenance` (JSON-able) goes into its metadata."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    info = {"packages": package_versions(), **(provenance or {})}
    meta = dict(table.schema.metadata or {})
    meta[PROVENANCE_KEY] = json.dumps(info, sort_keys=True, default=str).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a Parquet table written by `write_table`."""
    return pd.read_parquet(path)


def read_provenance(path: str | os.PathLike) -> dict:
    """The provenance dictionary stored in a table's metadata ({} if none)."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(PROVENANCE_KEY)
    return json.loads(raw) if raw else {}
