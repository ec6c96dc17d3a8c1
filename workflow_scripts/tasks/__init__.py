"""The prepare_task stage: model-independent task tables, one per task (docs/tasks.md).

A task table (results/data/<task>.parquet) has the columns of its kind (``kinds.KINDS[kind].columns``).
``split`` is "test" for the items and "val" for a multiple-choice dataset's held-out rows (MMLU's
``val/`` folder, the ``val`` file of the other formats: the fit set of the recalibrate stage); tables
without held-out rows are "test" everywhere. Val rows are ordinary rows: their own item ids, their
prompts built with the same shots, ``limit`` per subject as for the items.

A multiple-choice ``prompt`` is the context lm-evaluation-harness's ``fewshot_context`` builds
(description, solved shots, the question; no chat template), not ending with the target
delimiter; ``options`` are the continuations scored after it (target delimiter + letter, or
target delimiter + option text; no delimiter under ``chat``), ``choices`` the option texts and
``gold`` the index of the right one.

Each dataset format is declared once, beside its loader, in its family module (clm, generation,
multiple_choice); ``registry.FORMATS`` gathers them. Loaders record every file they read
(path -> SHA-256) in `read`, which goes into the table's provenance.
"""
from __future__ import annotations

import os
from itertools import islice
from pathlib import Path

import pandas as pd
from huggingface_hub import errors as hf_errors
from huggingface_hub import snapshot_download

from ..kinds import CLM, GENERATION, KINDS, MULTIPLE_CHOICE
from ..tables import DatasetError, write_table
from .files import require, short_repr
from .format import Format
from .multiple_choice import Subject
from .prompts import PROMPTING_KEYS, Prompting, doc_to_text, option_strings, prompt_prefix, resolve_prompting
from .registry import (
    FORMATS,
    LOCAL_KEYS,
    check_dataset_keys,
    check_format_keys,
    dataset_paths,
    format_table,
    package_data_files,
    task_scoring,
)

__all__ = ["FORMATS", "PROMPTING_KEYS", "Format", "check_dataset_keys", "check_format_keys", "check_shots",
           "dataset_paths", "format_table", "package_data_files", "prepare_task", "resolve_hub_files", "task_scoring"]


def _without_split(kind: str) -> list[str]:
    return [column for column in KINDS[kind].columns if column != "split"]


def _clm_table(load, ds: dict, read: dict, limit: int | None) -> pd.DataFrame:
    return pd.DataFrame(list(islice(load(ds, read), limit)), columns=_without_split(CLM)).assign(split="test")


def _generation_table(load, ds: dict, read: dict, limit: int | None) -> pd.DataFrame:
    table = pd.DataFrame(load(ds, read), columns=_without_split(GENERATION)).assign(split="test")
    if limit is not None:
        table = table.groupby("relation", sort=False).head(limit)
    return table.reset_index(drop=True)


def check_shots(subject: Subject, shots: int) -> None:
    """A DatasetError naming the dev file and the subject where it has fewer dev rows than ``shots``."""
    if len(subject.dev) < shots:
        raise DatasetError(f"{subject.dev_source}: subject {subject.name!r} has {len(subject.dev)} "
                           f"dev rows, fewer than shots={shots}")


def _mc_table(load, ds: dict, read: dict, shots: int, limit: int | None, seed: int, task: str,
              style: Prompting) -> tuple[pd.DataFrame, int]:
    """The rows of each subject, its items (split "test") then its held-out rows ("val"), at most `limit`
    of each; and the number of val rows."""
    rows, held_out = [], 0
    for subject in load(ds, read, seed, task):
        parts = {"test": subject.test[:limit], "val": subject.val[:limit]}
        held_out += len(parts["val"])
        if not any(parts.values()):
            continue
        check_shots(subject, shots)
        prefix = prompt_prefix(style, subject.name, subject.dev[:shots], task)
        rows += [{"item_id": q.item_id, "subject": subject.name, "question": q.question,
                  "prompt": prefix + doc_to_text(style, subject.name, q, task), "choices": list(q.choices),
                  "options": option_strings(style, q), "gold": q.gold, "scoring": style.scoring, "split": split}
                 for split, questions in parts.items() for q in questions]
    return pd.DataFrame(rows, columns=list(KINDS[MULTIPLE_CHOICE].columns)), held_out


# What the hub download raises when a repository or revision is missing, gated or unreachable:
# HTTP errors (HfHubHTTPError and the HTTP client's own base error), LocalEntryNotFoundError and
# OfflineModeIsEnabled (both OSError, as are connection errors), and invalid repo ids.
_HUB_ERRORS = (hf_errors.HfHubHTTPError, hf_errors.HTTPError, hf_errors.HFValidationError, OSError)


def resolve_hub_files(dataset: dict) -> dict:
    """Download the dataset's `hub` files, if any, and return the dataset with its local paths
    (the keys of registry.LOCAL_KEYS: path, dev, test, val, relations) made absolute inside the downloaded
    snapshot, and ``hub.commit``: the commit its revision (a branch, tag or commit) resolved to, the name of the
    snapshot's folder in the Hugging Face cache (as the fetch stage records a model's)."""
    hub = dataset.get("hub")
    if not hub:
        return dict(dataset)
    repo_id, revision = require(hub, "repo_id"), hub.get("revision", "main")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    try:
        root = snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=hub.get("files"),
                                 token=os.environ.get("HF_TOKEN"), local_files_only=offline)
    except _HUB_ERRORS as exc:
        raise DatasetError(f"cannot get dataset files from the Hugging Face Hub: repo {repo_id!r} "
                           f"revision {revision!r}: {type(exc).__name__}: {exc}") from exc
    resolved = {**dataset, "hub": {**hub, "commit": Path(root).name}}
    for key in LOCAL_KEYS:
        if key in resolved:
            resolved[key] = str(Path(root) / resolved[key])
    return resolved


def prepare_task(name: str, kind: str, dataset: dict, out_path, *, shots: int | None = None,
                 limit: int | None = None, seed: int = 0, scoring: str | None = None, prompt: str | None = None,
                 description: str | None = None, target_delimiter: str | None = None,
                 fewshot_delimiter: str | None = None, chat: bool | None = None) -> None:
    """Build the table of task `name` (of `kind`) from `dataset` and write it to `out_path`.

    Multiple choice only: `shots` (None: the format's default), `scoring` (letters | continuation),
    `prompt` and `description` (format strings), `target_delimiter`, `fewshot_delimiter` and `chat`
    (prompts.PROMPTING_KEYS); None leaves the format's default. Nothing is written when the data cannot be
    loaded (DatasetError)."""
    check_dataset_keys(name, kind, dataset)
    fmt = FORMATS[kind, dataset["format"]]
    options = {"scoring": scoring, "prompt": prompt, "description": description,
               "target_delimiter": target_delimiter, "fewshot_delimiter": fewshot_delimiter, "chat": chat}
    read: dict[str, str] = {}
    provenance = {"stage": "prepare_task", "task": name, "kind": kind, "dataset": dataset, "shots": shots,
                  "limit": limit, "seed": seed}
    if kind == MULTIPLE_CHOICE:
        shots = fmt.shots if shots is None else shots
        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
            raise DatasetError(f"task {name!r}: shots must be a whole number >= 0, found {short_repr(shots)}")
        style = resolve_prompting(name, fmt, **options)
        source = resolve_hub_files(dataset)
        table, held_out = _mc_table(fmt.load, source, read, shots, limit, seed, name, style)
        provenance.update(shots=shots, **style._asdict(), option_delimiter=style.option_delimiter,
                          val_items=held_out)
    else:
        given = [key for key in PROMPTING_KEYS if options[key] is not None]
        if given:
            raise DatasetError(f"task {name!r}: {', '.join(given)} apply to multiple_choice tasks only, "
                               f"not to kind {kind!r}")
        build = _clm_table if kind == CLM else _generation_table
        source = resolve_hub_files(dataset)
        table = build(fmt.load, source, read, limit)
    duplicated = sorted(set(table["item_id"][table["item_id"].duplicated()]))
    if duplicated:
        raise DatasetError(f"duplicate item ids in {', '.join(read) or fmt.name}: {duplicated[:10]}")
    if table.empty and limit != 0:
        raise DatasetError(f"task {name!r}: no items in {', '.join(read) or fmt.name}")
    if source.get("hub"):
        provenance["resolved_commit"] = source["hub"]["commit"]
    write_table(table, out_path, provenance={**provenance, "files": read})
