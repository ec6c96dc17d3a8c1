"""The runner: every task of a checkpoint through one backend, each task's table in shards that a killed job
resumes from, and the finished table that a rerun of the same fingerprint takes instead of running the model."""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..faults import fault_point
from ..kinds import CLM, GENERATION, kind_of
from ..names import check_inside_results
from ..tables import atomic_path, file_digest, module_sources, package_versions, read_provenance, read_table
from .backend import DEFAULT_BACKEND, Backend, InferenceError, load_backend
from .batches import Batches
from .clm import iter_token_scores
from .generation import iter_answers
from .multiple_choice import iter_option_scores
from .schemas import SCHEMAS, TOKEN_SCHEMA, in_table_order, write_row_groups

log = logging.getLogger(__name__)

# The settings of a task: config `inference` (every kind), then the task's own keys, each kind its own
# (kinds.KINDS[kind].settings; config/schema.yaml gives every default; none is set here).
SETTINGS = ("backend", "batch_size", "add_bos", "device", "dtype")
SHARD_ITEMS = 256  # questions or facts per shard of finished work (CLM: a shard per row group)


def check_settings(kind: str, settings: dict) -> None:
    """ValueError naming the settings that a task of ``kind`` lacks or does not take (``SETTINGS`` and
    its kind's ``settings``, each given)."""
    expected = {*SETTINGS, *kind_of(kind).settings}
    missing, unknown = sorted(expected - set(settings)), sorted(set(settings) - expected)
    if missing or unknown:
        problems = [f"{what} {', '.join(keys)}" for what, keys in (("missing", missing), ("unknown", unknown)) if keys]
        raise ValueError(f"settings of a {kind} task: {'; '.join(problems)} (it takes {', '.join(sorted(expected))})")


def infer_checkpoint(checkpoint_dir, tasks: list[dict], *, threads: int) -> None:
    """Run the checkpoint, loaded once, on each task and write the raw log-probabilities of each.

    A task is a dict: ``kind``, ``data`` (the task table), ``out`` (the Parquet file to write),
    ``settings`` (every one of ``SETTINGS`` and of its kind's settings: ``backend``, ``device`` and ``dtype``
    the same for every task) and ``provenance`` (stored in the table's metadata).

    Finished work goes to shards beside each ``out`` as it comes, then the finished table (see
    ``Shards``): a task whose table was written before with the same fingerprint is not run again.
    Nothing is written at an ``out`` unless its task succeeds."""
    for task in tasks:
        check_settings(task["kind"], task["settings"])
    backend = load_for_tasks(checkpoint_dir, [task["settings"] for task in tasks], threads=threads)
    for number, task in enumerate(tasks, 1):
        log.info("task %d/%d: %s on %s", number, len(tasks), task["kind"], task["data"])
        _infer_task(backend, checkpoint_dir, task["kind"], task["data"], task["out"], task["settings"],
                    threads=threads, provenance=task.get("provenance"))


def load_for_tasks(checkpoint_dir, settings: list[dict], *, threads: int) -> Backend:
    """The checkpoint loaded by the one backend, on the one device and dtype, that every task's ``settings``
    name, with ``threads`` CPU threads."""
    placement = {(s.get("backend", DEFAULT_BACKEND), s["device"], s["dtype"]) for s in settings}
    if len(placement) != 1:
        raise ValueError(f"{checkpoint_dir}: the tasks ask for different backends, devices or dtypes: "
                         f"{sorted(placement)}")
    return load_backend(checkpoint_dir, settings[0], threads=threads)


def run_inference(kind: str, data_path, checkpoint_dir, out_path, *, threads: int, provenance: dict | None = None,
                  **settings) -> None:
    """Run the checkpoint on one task table (``infer_checkpoint`` with one task)."""
    infer_checkpoint(checkpoint_dir, [{"kind": kind, "data": data_path, "out": out_path, "settings": settings,
                                       "provenance": provenance}], threads=threads)


def _infer_task(backend: Backend, checkpoint_dir, kind: str, data_path, out_path, settings: dict, *, threads: int,
                provenance: dict | None) -> None:
    """Write the table of one task at ``out_path`` (``settings``: as ``check_settings`` takes them)."""
    infer_table(backend, checkpoint_dir, kind, read_table(data_path), out_path, settings, threads=threads,
                provenance=provenance, data_digest=file_digest(data_path), data_info=read_provenance(data_path),
                source=data_path)


def infer_table(backend: Backend, checkpoint_dir, kind: str, data: pd.DataFrame, out_path, settings: dict, *,
                threads: int, provenance: dict | None, data_digest: str, data_info: dict, source) -> None:
    """Write the raw table of the items ``data`` (a task table of ``kind``) at ``out_path``, in shards that a
    killed job resumes from, keyed on ``data_digest`` (what the items' numbers depend on) among the rest;
    ``source`` names the items in messages."""
    check_settings(kind, settings)
    checkpoint = _read_json(Path(checkpoint_dir) / "provenance.json")
    batch_size, add_bos = settings["batch_size"], settings["add_bos"]
    own = {key: settings[key] for key in kind_of(kind).settings}
    bos = backend.resolve_add_bos(add_bos)
    shards = Shards(out_path, {
        "kind": kind, "batch_size": batch_size, **own, "bos": bos, "backend": _backend_code(backend),
        "device": backend.device, "dtype": backend.dtype, "threads": threads, "checkpoint": checkpoint,
        "data": data_digest, "code": module_sources(__package__), "packages": package_versions(),
        "provenance": provenance})
    if shards.take_finished(out_path):
        log.info("%s: written before with the same model, data, settings and code: taken as it was", out_path)
        return
    info = {"stage": "infer", "kind": kind, **(provenance or {}), "checkpoint": checkpoint,
            "data": data_info, "device": backend.device, "dtype": backend.dtype,
            "params": backend.num_parameters, "add_bos": add_bos, "bos": bos, **own,
            "context": backend.context_length}
    batches = Batches(shards.batch_size or batch_size, backend.out_of_memory)
    started = time.perf_counter()
    try:
        if kind == CLM:
            for frame in iter_token_scores(backend, data, **own, batch_size=batch_size, skip_groups=len(shards),
                                           batches=batches):
                shards.add(frame, TOKEN_SCHEMA, batches.size)
            rows = write_row_groups(shards.frames(), out_path, TOKEN_SCHEMA, provenance=info)
        else:
            if kind == GENERATION:
                frames = iter_answers(backend, data, **own, batch_size=batch_size, bos=bos, skip=shards.item_ids(),
                                      batches=batches)
            else:
                frames = iter_option_scores(backend, data, **own, batch_size=batch_size, bos=bos,
                                            skip=shards.item_ids(), batches=batches)
            pending = []
            for frame in frames:
                pending.append(frame)
                if sum(map(len, pending)) >= SHARD_ITEMS:
                    shards.add(pd.concat(pending, ignore_index=True), SCHEMAS[kind], batches.size)
                    pending = []
            if pending:
                shards.add(pd.concat(pending, ignore_index=True), SCHEMAS[kind], batches.size)
            result = in_table_order(kind, list(shards.frames()), data)
            if truncated := int(result["truncated"].sum()):
                log.warning("%d of %d prompts of %s are longer than the model's context (%d tokens%s) and were "
                            "left-truncated (column truncated)", truncated, len(result), source,
                            backend.context_length,
                            f", less {own['max_new_tokens']} to generate" if kind == GENERATION else "")
            rows = write_row_groups([result] if len(result) else [], out_path, SCHEMAS[kind], provenance=info)
    except InferenceError as error:  # the same model and settings would fail the same way: keep nothing
        shards.remove()
        where = f" ({checkpoint['source']}@{checkpoint.get('revision')})" if "source" in checkpoint else ""
        raise InferenceError(f"checkpoint {checkpoint_dir}{where} on {source}: {error}") from error
    shards.keep_finished(out_path)
    log.info("inference done: %d rows in %.1f s", rows, time.perf_counter() - started)


def _backend_code(backend: Backend) -> dict:
    """The backend's class and the digest of the file that defines it (a backend may live outside this package)."""
    cls = type(backend)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "file": file_digest(inspect.getfile(cls))}


class Shards:
    """The work of one inference table, in ``<out>.shards/``: while it runs, its finished parts
    (Parquet files written atomically, each with a fingerprint of all that shapes the numbers:
    settings, backend, device and dtype, threads, the task table, the checkpoint, the code of this
    package, library versions, the table's provenance; and the batch size in use when it was written,
    smaller than configured after an out-of-memory); once written, the table itself under its fingerprint.
    Work of another fingerprint is deleted when the job starts, never reused; a part that does not read whole
    (damaged after it was written) is deleted with those after it, and its items are run again."""

    KEY = b"calibration_shard"

    def __init__(self, out_path, fingerprint: dict):
        self.folder = Path(f"{out_path}.shards")
        self.fingerprint = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()
        self.finished = self.folder / f"finished-{self.fingerprint}.parquet"
        self.paths: list[Path] = []
        self.batch_size: int | None = None
        if self.folder.is_dir():
            paths = sorted(self.folder.glob("shard-*.parquet"))
            metas = [self._meta(path) for path in paths]
            others = [p for p in self.folder.glob("finished-*.parquet") if p != self.finished]
            if not others and all(m.get("fingerprint", self.fingerprint) == self.fingerprint for m in metas):
                self.paths = self._intact(paths, metas)
                self.batch_size = metas[len(self.paths) - 1]["batch_size"] if self.paths else None
                if self.paths:
                    log.info("resuming after %d finished shard(s) in %s", len(self.paths), self.folder)
            else:
                log.warning("%s holds shards of other settings, data, checkpoint or code: starting over", self.folder)
                self.remove()

    def __len__(self) -> int:
        return len(self.paths)

    def _meta(self, path: Path) -> dict:
        try:
            return json.loads((pq.read_schema(path).metadata or {})[self.KEY])
        except (OSError, KeyError, ValueError, pa.ArrowException):
            return {}

    def _intact(self, paths: list[Path], metas: list[dict]) -> list[Path]:
        """The shards that follow each other from the first, each whole (``_shard_problem``). The first that is not
        is removed with those after it, and the log says why: their items are run again."""
        for index, (path, meta) in enumerate(zip(paths, metas)):
            if problem := _shard_problem(path, meta, index):
                log.warning("%s: %s: removed with the %d shard(s) after it, their items run again", path, problem,
                            len(paths) - index - 1)
                for damaged in paths[index:]:
                    damaged.unlink()
                return paths[:index]
        return paths

    def add(self, frame: pd.DataFrame, schema: pa.Schema, batch_size: int) -> None:
        """Write the next shard (atomically)."""
        path = self.folder / f"shard-{len(self.paths):05d}.parquet"
        table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
        meta = {"fingerprint": self.fingerprint, "index": len(self.paths), "batch_size": batch_size,
                "rows": len(frame)}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), self.KEY: json.dumps(meta).encode()})
        with atomic_path(path, suffix=".parquet") as tmp:
            pq.write_table(table, tmp)
        self.paths.append(path)
        fault_point("infer", path)  # tests: killed after a shard is written

    def item_ids(self) -> set[str]:
        """Ids of the items the shards hold."""
        return {i for path in self.paths for i in pq.read_table(path, columns=["item_id"]).column(0).to_pylist()}

    def frames(self):
        """The shards' rows, one DataFrame per shard, in order."""
        for path in self.paths:
            yield pq.read_table(path).to_pandas()

    def take_finished(self, out_path) -> bool:
        """Put the table written before with this fingerprint at ``out_path``, if there is one and it reads whole
        (``_parquet_problem``; a damaged one is removed, and the log says why)."""
        if not self.finished.is_file():
            return False
        if problem := _parquet_problem(self.finished):
            log.warning("%s: %s: removed, the task runs again", self.finished, problem)
            self.remove()
            return False
        Path(out_path).unlink(missing_ok=True)
        os.link(self.finished, out_path)
        return True

    def keep_finished(self, out_path) -> None:
        """Replace the parts by the written table (a hard link; kept only where the filesystem has them)."""
        self.remove()
        try:
            self.folder.mkdir(parents=True)
            os.link(out_path, self.finished)
        except OSError:
            self.remove()

    def remove(self) -> None:
        check_inside_results(self.folder)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.paths = []


def _parquet_problem(path: Path) -> str | None:
    """What keeps an inference table or shard from being read whole: its footer, a row group (read one at a time)
    or its key column item_id, missing or with values missing; None if nothing."""
    try:
        with pq.ParquetFile(path) as file:
            if "item_id" not in file.schema_arrow.names:
                return "no key column item_id"
            for group in range(file.num_row_groups):
                if file.read_row_group(group).column("item_id").null_count:
                    return f"item_id missing in row group {group}"
    except (OSError, pa.ArrowException) as error:
        return f"does not parse as Parquet ({str(error).splitlines()[0]})"
    return None


def _shard_problem(path: Path, meta: dict, index: int) -> str | None:
    """What is wrong with shard ``index`` of a work at ``path`` (``meta``: its metadata, {} where it did not parse):
    it does not read whole (``_parquet_problem``), or has no shard metadata, another index, or other rows than
    were written; None if nothing."""
    if problem := _parquet_problem(path):
        return problem
    if not meta:
        return "no shard metadata"
    if meta.get("index") != index:
        return f"shard number {meta.get('index')} where shard {index} belongs"
    if (rows := pq.read_metadata(path).num_rows) != meta.get("rows"):
        return f"{rows} rows where {meta.get('rows')} were written"
    return None


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
