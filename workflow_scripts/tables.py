"""Parquet tables written atomically, with the provenance of what made them in their metadata; the
fingerprints of resumable work (settings, inputs, code, libraries); the files of a saved model and the checks of
a checkpoint before it is resumed from; and the file helpers every stage shares: digests, glob expansion, files and
folders built beside, flushed to disk and renamed."""
from __future__ import annotations

import ast
import errno
import functools
import glob
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .faults import fault_point
from .names import check_inside_results

log = logging.getLogger(__name__)

PROVENANCE_KEY = b"calibration"
_PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "peft", "trl", "datasets", "pandas", "pyarrow",
             "numpy", "scipy", "scikit-learn", "relplot", "huggingface_hub", "snakemake")


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the file, the row and the problem."""


class MissingDataError(DatasetError, FileNotFoundError):
    """A path or glob pattern that names no file."""


class DiskFullError(OSError):
    """An output not written for want of space on its disk; the message names the output."""


class UntrustedFileError(ValueError):
    """A file of torch.save that holds objects other than tensors and plain values: loading it would run code."""


def package_versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers (missing ones are skipped)."""
    return dict(_installed_versions())


@functools.cache
def _installed_versions() -> tuple[tuple[str, str], ...]:
    """Read once per process: every table a job writes records them, and each read parses package metadata."""
    versions = []
    for name in _PACKAGES:
        try:
            versions.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            pass
    return tuple(versions)


def code_version() -> dict:
    """The code that made a table: the package version and a short SHA-256 of the source of every
    module of this package the process has imported (the stage module and its helpers)."""
    modules = {}
    for name, module in sorted(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if name.startswith(__package__ + ".") and file and file.endswith(".py"):
            modules[name.partition(".")[2]] = file_digest(file)[:16]
    try:
        version = metadata.version("llm-calibration-workflow")
    except metadata.PackageNotFoundError:
        version = None
    return {"version": version, "modules": modules}


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expand_files(pattern: str | os.PathLike) -> list[Path]:
    """The files a path or glob pattern names, sorted; raises MissingDataError if there are none."""
    pattern = str(pattern)
    if any(ch in pattern for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not files:
            raise MissingDataError(f"no file matches {pattern!r}")
        return files
    if not os.path.isfile(pattern):
        raise MissingDataError(f"file not found: {pattern}")
    return [Path(pattern)]


def path_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a folder's files (their paths below it and their contents)."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_digest(file)}\n".encode())
    return digest.hexdigest()


# Modules of this package left out of every code fingerprint and every rule's code inputs, because they never
# change a result: editing them must not rerun the work of a study.
NOT_RESULT_CODE = {
    "faults": "fault injection for the kill tests: does nothing unless CALIBRATION_FAULT names a point",
    "runlog": "the log file and log format of a rule script",
}


def _module_file(root: Path, name: str) -> Path | None:
    """The file of module ``name`` (dotted, relative to the package at ``root``), or None if there is none."""
    path = root.joinpath(*name.split(".")) if name else root
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if name and path.with_suffix(".py").is_file() else None


def _imported_modules(root: Path, package: str, name: str, file: Path) -> list[str]:
    """The modules of the package (dotted names relative to it) that the module ``name`` imports anywhere in its
    file (imports inside functions too), each with the packages above it, whose __init__ runs first."""
    here = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]  # the module's own package
    found = []
    for node in ast.walk(ast.parse(file.read_bytes(), filename=str(file))):
        if isinstance(node, ast.Import):
            targets = [alias.name.split(".")[1:] for alias in node.names if alias.name.split(".")[0] == package]
        elif isinstance(node, ast.ImportFrom) and node.level:  # from .x import y, from ..x import y, from . import x
            base = here[:len(here) - node.level + 1] + (node.module.split(".") if node.module else [])
            targets = [base] + [base + [alias.name] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == package:
            base = node.module.split(".")[1:]  # from <package>.x import y, from <package> import x
            targets = [base] + [base + [alias.name] for alias in node.names]
        else:
            continue
        for parts in targets:  # y of `from x import y` counts where it is a module, not a name in x
            found += [".".join(parts[:i]) for i in range(len(parts) + 1) if _module_file(root, ".".join(parts[:i]))]
    return found


def module_files(module: str, root: str | os.PathLike | None = None) -> dict[str, Path]:
    """The import closure of ``module`` (a module of this package, e.g. ``workflow_scripts.pretrain`` or
    ``workflow_scripts.plots.reliability``): its file and the file of every module of the package it imports,
    directly or through another, at any place in the file, and the __init__ of every package on the way; dotted
    name relative to the package ("__init__" for its own __init__) -> file. Modules of NOT_RESULT_CODE are left out.
    Read from the sources alone: nothing is imported. ``root``: the package's folder (default: where the package is
    imported from)."""
    package, _, name = module.partition(".")
    root = Path(root) if root else Path(importlib.util.find_spec(package).origin).parent
    files, todo = {}, [".".join(name.split(".")[:i]) for i in range(name.count(".") + 2)]
    while todo:
        name = todo.pop()
        if name in files or name.split(".")[-1] in NOT_RESULT_CODE:
            continue
        if (file := _module_file(root, name)) is None:
            raise ModuleNotFoundError(f"no module {package}.{name} in {root}")
        files[name] = file
        todo += _imported_modules(root, package, name, file)
    return {name or "__init__": file for name, file in sorted(files.items())}


def module_sources(module: str) -> dict[str, str]:
    """SHA-256 of the source of every module of ``module``'s import closure (module_files): name -> digest."""
    return {name: file_digest(path) for name, path in module_files(module).items()}


def stage_fingerprint(module: str, settings: dict, inputs: dict) -> dict:
    """What the work of a resumable stage depends on: its ``settings``, the digests of its ``inputs``
    (name -> file or folder), its code (``module_sources(module)``) and the library versions."""
    return {"settings": settings, "inputs": {name: path_digest(path) for name, path in inputs.items()},
            "code": module_sources(module), "packages": package_versions()}


def prepare_work_dir(work_dir: str | os.PathLike, fingerprint: dict) -> bool:
    """Whether ``work_dir`` holds work of ``fingerprint`` (to resume). If not, it is emptied, the log
    says which parts of the fingerprint differ, and ``fingerprint`` is written to it
    (``fingerprint.json``) for the work to come."""
    check_inside_results(work_dir)
    work_dir = Path(work_dir)
    marker = work_dir / "fingerprint.json"
    fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
    try:
        found = json.loads(marker.read_text())
    except (OSError, ValueError):
        found = None
    if found == fingerprint:
        return True
    if found is not None:
        log.info("%s: work of another fingerprint, differing in %s: starting afresh", work_dir,
                 _differences(found, fingerprint))
    elif work_dir.is_dir() and any(work_dir.iterdir()):
        log.info("%s: work without a fingerprint: starting afresh", work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    with atomic_path(marker, suffix=".json") as tmp:
        tmp.write_text(json.dumps(fingerprint, sort_keys=True, indent=1))
    return False


def _differences(old: dict, new: dict) -> str:
    """The parts of two fingerprints that differ, each with the keys that differ in it: ``code (align)``."""
    parts = []
    for part in sorted(set(old) | set(new)):
        a, b = old.get(part), new.get(part)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            parts.append(f"{part} ({', '.join(keys)})")
        else:
            parts.append(part)
    return "; ".join(parts)


def model_files(folder: str | os.PathLike) -> list[Path]:
    """The files of a model that transformers saved in ``folder``: config.json, generation_config.json
    where there is one, and the weights, model.safetensors or model.safetensors.index.json with every
    shard it names."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = json.loads(index.read_text()).get("weight_map")
        if not isinstance(shards, dict) or not shards:
            raise ValueError(f"{index}: no weight_map of tensor names to shard files")
        weights = [index] + [folder / name for name in sorted(set(shards.values()))]
    else:
        weights = [folder / "model.safetensors"]
    missing = [p.name for p in [folder / "config.json", *weights] if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: not a saved model, {', '.join(missing)} missing")
    configs = [folder / "config.json"] + [p for p in [folder / "generation_config.json"] if p.is_file()]
    return configs + weights


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """What makes a saved checkpoint unfit to resume from, as ``<file>: <what>``: a safetensors file of ``folder``
    whose header does not parse or whose size is not what the header gives, or a ``*.pt`` file of torch.save that
    does not load with weights_only=True (truncated, damaged); None if nothing. A ``*.pt`` file of objects other
    than tensors and plain values raises UntrustedFileError."""
    folder = Path(folder)
    checks = [(path, safetensors_problem) for path in sorted(folder.glob("*.safetensors"))]
    for path, check in checks + [(path, torch_file_problem) for path in sorted(folder.glob("*.pt"))]:
        if problem := check(path):
            return f"{path}: {problem}"
    return None


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """What is wrong with a safetensors file: its 8-byte header length, JSON header or size (the header's end
    offset of the tensors' data past the header must be the file's end); None if nothing."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if size < 8 or length > size - 8:
            return f"{size} bytes, too few for its header length and header"
        try:
            header = json.loads(f.read(length))
            end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"),
                      default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
            return f"its header does not parse ({error.__class__.__name__}: {error})"
    if 8 + length + end != size:
        return f"{size:,} bytes where its header gives {8 + length + end:,}"
    return None


def torch_file_problem(path: str | os.PathLike) -> str | None:
    """What keeps a file of torch.save from loading with weights_only=True (its tensors mapped, not read); None if
    it loads. UntrustedFileError where it holds objects other than tensors and plain values."""
    import pickle

    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"WeightsUnpickler error: (.+)", str(error))
        reason = found.group(1).split(" Please use")[0] if found else str(error).splitlines()[0]
        if reason.startswith("Unsupported global"):
            raise UntrustedFileError(f"{path}: refused, loading it would run code ({reason}); "
                                     f"delete it to compute it afresh") from error
        return f"does not load ({reason})"
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        return f"does not load ({str(error).splitlines()[0] if str(error) else error.__class__.__name__})"
    return None


def provenance_info(provenance: dict | None = None) -> dict:
    """What every table's metadata holds: library versions, code version, then ``provenance``."""
    return {"packages": package_versions(), "code": code_version(), **(provenance or {})}


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Temporary files of `path` left by a killed process (the same name pattern) are removed first:
    one job at a time writes a given output, so they belong to no live writer."""
    check_inside_results(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix or ".tmp"
    _remove_stale_temporaries(path, suffix)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        _fsync(tmp)  # its contents on the disk before the rename publishes them
        fault_point("write", path)
        os.replace(tmp, path)
        _fsync(path.parent)  # and the rename
    except Exception as error:
        _raise_if_disk_full(error, path)
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield an empty folder beside ``path``; it replaces ``path`` only if the block succeeds, and is
    removed otherwise. Folders of ``path`` that a killed process left (``.<name>.tmp-*``) are removed
    first: one job at a time writes a given output."""
    check_inside_results(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.tmp-"
    for stale in path.parent.iterdir():
        if stale.name.startswith(prefix) and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the usual mode
        yield tmp
        for root, _, files in os.walk(tmp, topdown=False):  # every file and folder on the disk before the rename
            for name in files:
                _fsync(Path(root) / name)
            _fsync(root)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        _fsync(path.parent)  # and the rename
    except Exception as error:
        _raise_if_disk_full(error, path)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync(path: str | os.PathLike) -> None:
    """Flush a file's contents, or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# torch.save reports a write that ran out of space only as a failed stream ("unexpected pos ..."): put down to a
# full disk where fewer bytes than this are free.
_NEARLY_FULL = 1 << 20
_TORCH_WRITE_FAILED = ("unexpected pos", "PytorchStreamWriter failed")


def _raise_if_disk_full(error: Exception, path: Path) -> None:
    """Raise DiskFullError naming ``path`` in place of ``error`` where the disk of ``path`` is full: ``error`` says
    so, or it is torch.save's failed write and less than _NEARLY_FULL bytes are free. A DiskFullError of a file
    written inside ``path`` stays as it is."""
    if isinstance(error, DiskFullError):
        return
    free = shutil.disk_usage(path.parent).free
    said = (getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
            or any(text in str(error) for text in ("No space left on device", "Disk quota exceeded")))
    torch_write = any(text in str(error) for text in _TORCH_WRITE_FAILED) and free < _NEARLY_FULL
    if said or torch_write:
        reason = str(error).splitlines()[0] if str(error) else error.__class__.__name__
        raise DiskFullError(errno.ENOSPC, f"{path}: not written, its disk is full ({free:,} bytes free); nothing "
                                          f"of the attempt was kept ({reason})") from error


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
