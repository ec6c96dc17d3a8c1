"""The one rule for the names that reach a path (models, revisions, tasks, pretrain sizes, instruction sets, ...),
and the check that what a stage writes, removes or swaps stays inside the workflow's ``results/`` folder.

A name is 1 to 100 ASCII letters or digits, ``_``, ``-``, ``.`` and ``+``, and neither ``.`` nor ``..``: it never
names a parent or the folder itself, never holds a ``/``. config/schema.yaml carries the same regex
(``$defs.name``); ``check_name`` also refuses what the schema's regex lets through (a trailing newline, which
Python's ``$`` accepts) and is applied to the names the workflow makes (``<base>-sft-<set>-<tuning>``).

The workflow's root is the working directory of the Snakemake run, and its paths are relative to it
(``results/...``): a relative path must resolve (symbolic links followed) strictly inside ``./results``, which
may itself be a link (to a scratch disk, say). An absolute path is a caller's own choice (a test's temporary
folder, a benchmark's) and is taken as given. No path, relative or absolute, may hold a ``.`` or ``..``
component: ``results/checkpoints/m/.`` would collapse onto the folder of every revision of ``m``."""
from __future__ import annotations

import os
import re
from pathlib import Path

NAME_PATTERN = r"^(?!\.\.?$)[A-Za-z0-9_.+-]{1,100}$"
NAME_RULE = "a name is 1 to 100 ASCII letters, digits, '_', '-', '.' or '+', and not '.' or '..'"
RESULTS = "results"
_SHOWN = 40  # characters of a long name shown in an error


def check_name(kind: str, name) -> str:
    """``name`` if it follows the name rule, else ValueError with one line naming the kind: ``model name '..': ...``."""
    if isinstance(name, str) and re.fullmatch(NAME_PATTERN, name):
        return name
    shown = repr(name) if not isinstance(name, str) or len(name) <= _SHOWN else \
        f"{name[:_SHOWN]!r}... ({len(name)} characters)"
    raise ValueError(f"{kind} {shown}: {NAME_RULE}")


def check_inside_results(path: str | os.PathLike) -> None:
    """Refuse (ValueError naming the path) a path to write, remove or swap that has a ``.`` or ``..`` component,
    or that is relative and does not resolve strictly inside ``results/`` of the working directory."""
    text = os.fspath(path)
    if {".", ".."} & set(text.replace(os.sep, "/").split("/")):
        raise ValueError(f"{text}: a '.' or '..' in the path: refused to write or remove it")
    if Path(text).is_absolute():
        return
    results = (Path.cwd() / RESULTS).resolve()
    if results not in Path(text).resolve().parents:
        raise ValueError(f"{text}: resolves outside the workflow's {RESULTS}/ folder ({results}): refused to write "
                         "or remove it")
