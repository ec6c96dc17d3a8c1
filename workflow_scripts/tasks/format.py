"""What a dataset format declares, once, next to its loader (the family modules' ``FORMATS``; the
registry gathers them)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..kinds import KINDS, MULTIPLE_CHOICE, SCORINGS


def no_package_files() -> list[str]:
    """A format that reads no installed package's data."""
    return []


@dataclass(frozen=True)
class Format:
    """A dataset format of one task kind: its ``format`` name, its loader and the dataset keys it reads.

    ``load`` is ``(dataset, read) -> items`` for clm ((item id, text) pairs) and generation (row dicts), and
    ``(dataset, read, seed, task) -> list[Subject]`` for multiple choice; every file it opens goes into
    ``read`` (path -> SHA-256). ``file_keys`` are the task's input files (registry.dataset_paths takes them in
    their declared order: path, dev, test, val, relations) and, for a `hub` dataset, paths inside the download."""

    kind: str  # a key of kinds.KINDS
    name: str  # the dataset's `format`
    load: Callable
    keys: tuple[str, ...]  # every dataset key it reads besides `format` and `hub`
    file_keys: tuple[str, ...] = ()  # the keys naming local files or folders (globs)
    package_files: Callable[[], list[str]] = no_package_files  # the installed package data it reads
    style: str | None = None  # multiple choice: its default prompts, a key of prompts.PROMPT_STYLES
    scoring: str | None = None  # multiple choice: its default scoring, one of kinds.SCORINGS
    shots: int | None = None  # multiple choice: its default number of solved examples

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"format {self.name!r}: unknown kind {self.kind!r}")
        if not set(self.file_keys) <= set(self.keys):
            raise ValueError(f"format {self.name!r}: file keys {self.file_keys} are not all among its keys")
        multiple_choice = (self.style, self.scoring, self.shots)
        if self.kind == MULTIPLE_CHOICE and (None in multiple_choice or self.scoring not in SCORINGS):
            raise ValueError(f"format {self.name!r}: a multiple-choice format declares style, scoring and shots")
        if self.kind != MULTIPLE_CHOICE and multiple_choice != (None, None, None):
            raise ValueError(f"format {self.name!r}: style, scoring and shots are for multiple-choice formats only")
