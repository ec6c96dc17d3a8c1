"""Parquet tables written atomically, with the provenance of what made them in their metadata."""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .faults import fault_point

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


def code_version() -> dict:
    """The code that made a table: the package version and a short SHA-256 of the source of every
    module of this package the process has imported (the stage module and its helpers)."""
    modules = {}
    for name, module in sorted(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if name.startswith(__package__ + ".") and file and file.endswith(".py"):
            modules[name.rpartition(".")[2]] = hashlib.sha256(Path(file).read_bytes()).hexdigest()[:16]
    try:
        version = metadata.version("llm-calibration-workflow")
    except metadata.PackageNotFoundError:
        version = None
    return {"version": version, "modules": modules}


def provenance_info(provenance: dict | None = None) -> dict:
    """What every table's metadata holds: library versions, code version, then ``provenance``."""
    return {"packages": package_versions(), "code": code_version(), **(provenance or {})}


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Temporary files of `path` left by a killed process (the same name pattern) are removed first:
    one job at a time writes a given output, so they belong to no live writer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix or ".tmp"
    _remove_stale_temporaries(path, suffix)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        fault_point("write", path)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _remove_stale_temporaries(path: Path, suffix: str) -> None:
    """Delete the temporary files ``atomic_path`` names ``.<name>.<8 random characters><suffix>``."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"[A-Za-z0-9_]{8}" + re.escape(suffix))
    for candidate in path.parent.iterdir():
        if pattern.fullmatch(candidate.name) and candidate.is_file():
            candidate.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_table(df: pd.DataFrame, path: str | os.PathLike, provenance: dict | None = None) -> None:
    """Write `df` to Parquet at `path` atomically; `provenance` (JSON-able) goes into its metadata."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    info = provenance_info(provenance)
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
