"""Property tests of the task loaders (hypothesis): one malformed row anywhere in a dataset file
stops prepare_task with a DatasetError naming the file and that row, and nothing is written; and
whatever a row holds, the loaders raise nothing but DatasetError."""
from __future__ import annotations

import csv
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workflow_scripts.tables import DatasetError
from workflow_scripts.tasks import prepare_task

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6)
NOT_TEXT = JSON.filter(lambda v: not isinstance(v, str))
BAD_TEXT = NOT_TEXT | st.sampled_from(["", " ", "\t"])  # not a string, or a blank one
NOT_OBJECT = JSON.filter(lambda v: not isinstance(v, dict))


class Raw(str):
    """A line written as it is (not JSON-encoded), e.g. broken JSON."""


def _broken(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return bool(text.strip())
    return False


BROKEN_JSON = (st.sampled_from(["{", '{"text": "a"', "{'text': 'a'}", "nope", "[1,", '{"a": 1}}'])
               | st.text(max_size=8).filter(lambda t: "\n" not in t and "\r" not in t and _broken(t))).map(Raw)


def _json_lines(path: Path, rows: list) -> None:
    path.write_text("".join((row if isinstance(row, Raw) else json.dumps(row)) + "\n" for row in rows))


def _json_array(path: Path, rows: list) -> None:
    path.write_text(json.dumps(rows))


class Format(NamedTuple):
    kind: str
    file: str
    write: Callable
    dataset: Callable[[Path], dict]
    good: Callable[[int], dict]
    bad_cells: dict  # key -> values that make a row malformed
    options: dict = {}
    row_level: bool = True  # a non-object row or a broken JSON line is also a malformed row
    optional: tuple = ()  # keys of bad_cells a row may lack


def _valid_mc1(value) -> bool:
    """TruthfulQA MC1 targets: {answer: 0 or 1} with 2 to 26 answers, exactly one true."""
    return (isinstance(value, dict) and 2 <= len(value) <= 26
            and all(type(v) is int and v in (0, 1) for v in value.values()) and sum(value.values()) == 1)


FORMATS = {
    "lama": Format(
        "generation", "trex.jsonl", _json_lines, lambda p: {"format": "lama", "path": str(p)},
        lambda i: {"sub_label": f"Place {i}", "obj_label": f"Country {i}", "predicate_id": "P17",
                   "template": "[X] is located in [Y] .", "aliases": [f"Land {i}"]},
        {"sub_label": BAD_TEXT, "obj_label": BAD_TEXT, "predicate_id": BAD_TEXT, "template": NOT_TEXT,
         "aliases": JSON.filter(lambda v: v is not None and not isinstance(v, str) and not (
             isinstance(v, list) and all(isinstance(x, str) for x in v)))},
        optional=("aliases", "template")),
    "rome_knowns": Format(
        "generation", "knowns.json", _json_array, lambda p: {"format": "rome_knowns", "path": str(p)},
        lambda i: {"known_id": i, "subject": f"Subject {i}", "attribute": f"Object {i}",
                   "prompt": f"Subject {i} is a", "relation_id": "P31"},
        {"known_id": JSON.filter(lambda v: isinstance(v, bool) or not isinstance(v, (int, str))) | st.just(" "),
         "subject": BAD_TEXT, "attribute": BAD_TEXT, "prompt": BAD_TEXT, "relation_id": BAD_TEXT},
        row_level=False),
    "mmlu_parquet": Format(  # cais/mmlu's columns, here as JSON lines
        "multiple_choice", "test.jsonl", _json_lines, lambda p: {"format": "mmlu_parquet", "test": str(p)},
        lambda i: {"question": f"Question {i}?", "subject": "toy", "choices": ["a", "b", "c", "d"], "answer": i % 4},
        {"question": NOT_TEXT, "subject": BAD_TEXT,
         "choices": JSON.filter(
             lambda v: not (isinstance(v, list) and len(v) >= 2 and all(isinstance(c, str) for c in v))),
         "answer": JSON.filter(lambda v: isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 4)},
        options={"shots": 0}),
    "choices_jsonl": Format(  # any number of options; id and subject optional
        "multiple_choice", "items.jsonl", _json_lines, lambda p: {"format": "choices_jsonl", "path": str(p)},
        lambda i: {"question": f"Question {i}?", "choices": ["a", "b", "c"], "answer": i % 3, "subject": "toy"},
        {"question": NOT_TEXT,
         "choices": JSON.filter(
             lambda v: not (isinstance(v, list) and len(v) >= 2 and all(isinstance(c, str) for c in v))),
         "answer": JSON.filter(lambda v: isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 3),
         "subject": JSON.filter(lambda v: v is not None and not (isinstance(v, str) and v.strip()))},
        optional=("subject",)),
    "arc": Format(  # allenai/ai2_arc's columns, here as JSON lines
        "multiple_choice", "arc.jsonl", _json_lines, lambda p: {"format": "arc", "path": str(p)},
        lambda i: {"id": f"ARC_{i}", "question": f"Question {i}?",
                   "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]}, "answerKey": "ABC"[i % 3]},
        {"question": NOT_TEXT,
         "choices": JSON.filter(lambda v: not (isinstance(v, dict) and {"text", "label"} <= set(v))),
         "answerKey": JSON.filter(lambda v: v not in ("A", "B", "C")),
         "id": JSON.filter(lambda v: not (v is None or type(v) is int or isinstance(v, str) and v.strip()))},
        optional=("id",)),
    "truthfulqa_mc": Format(  # TruthfulQA's mc_task.json: a JSON array
        "multiple_choice", "mc_task.json", _json_array, lambda p: {"format": "truthfulqa_mc", "path": str(p)},
        lambda i: {"question": f"Question {i}?", "mc1_targets": {f"true {i}": 1, f"false {i}": 0},
                   "mc2_targets": {f"true {i}": 1, f"also true {i}": 1, f"false {i}": 0}},
        {"question": NOT_TEXT, "mc1_targets": JSON.filter(lambda v: not _valid_mc1(v))},
        row_level=False),
    "jsonl": Format(
        "clm", "docs.jsonl", _json_lines, lambda p: {"format": "jsonl", "path": str(p)},
        lambda i: {"text": f"Document number {i}.", "meta": i},
        {"text": NOT_TEXT.filter(lambda v: v is not None)}),
}


@st.composite
def malformed(draw, fmt: Format):
    """(rows, row number of the malformed one)."""
    rows = [fmt.good(i) for i in range(draw(st.integers(1, 6)))]
    k = draw(st.integers(0, len(rows)))
    ways = ["cell", "missing"] + (["not an object", "broken JSON"] if fmt.row_level else ["not an object"])
    if fmt.kind == "generation" and fmt.file == "knowns.json" and k:
        ways.append("duplicate id")
    way = draw(st.sampled_from(ways))
    row = fmt.good(len(rows))
    if way == "cell":
        key = draw(st.sampled_from(sorted(fmt.bad_cells)))
        row[key] = draw(fmt.bad_cells[key])
    elif way == "missing":
        row.pop(draw(st.sampled_from(sorted(k for k in fmt.bad_cells if k not in fmt.optional))))
    elif way == "not an object":
        row = draw(NOT_OBJECT)
    elif way == "broken JSON":
        row = draw(BROKEN_JSON)
    else:
        row["known_id"] = rows[draw(st.integers(0, k - 1))]["known_id"]
    return rows[:k] + [row] + rows[k:], k + 1


def _prepare(fmt: Format, rows: list):
    """prepare_task on a file of these rows: (DatasetError or None, file, whether output exists)."""
    with tempfile.TemporaryDirectory() as folder:
        path, out = Path(folder) / fmt.file, Path(folder) / "out" / "t.parquet"
        fmt.write(path, rows)
        try:
            prepare_task("t", fmt.kind, fmt.dataset(path), out, **fmt.options)
            error = None
        except DatasetError as exc:
            error = exc
        written = out.parent.exists() and any(out.parent.iterdir())
    return error, path, written


@pytest.mark.parametrize("name", FORMATS)
@PROPERTY
@given(data=st.data())
def test_a_malformed_row_is_named_and_nothing_is_written(name, data):
    fmt = FORMATS[name]
    rows, n = data.draw(malformed(fmt))
    error, path, written = _prepare(fmt, rows)
    assert error is not None, f"no error for row {n}: {rows[n - 1]!r}"
    assert f"{path}: row {n}:" in str(error)
    assert not written


@pytest.mark.parametrize("name", FORMATS)
@PROPERTY
@given(data=st.data())
def test_any_row_loads_or_is_a_dataset_error(name, data):
    fmt = FORMATS[name]
    rows = [fmt.good(i) for i in range(data.draw(st.integers(0, 4)))]
    row = data.draw(JSON | st.fixed_dictionaries({}, optional={k: JSON for k in fmt.good(0)})
                    | st.builds(lambda key, value: {**fmt.good(99), key: value}, st.sampled_from(sorted(fmt.good(0))),
                                JSON))
    rows.insert(data.draw(st.integers(0, len(rows))), row)
    error, path, written = _prepare(fmt, rows)  # any other exception fails the test
    if error is not None:
        assert str(path) in str(error) and not written
    else:
        assert written


# ---------------------------------------------------------------- MMLU's original CSV files

FIELD = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6)
BAD_CSV_ROW = (st.lists(FIELD, max_size=9).filter(lambda row: len(row) != 6)
               | st.tuples(st.lists(FIELD, min_size=5, max_size=5), FIELD.filter(lambda a: a not in "ABCD" or not a))
               .map(lambda t: t[0] + [t[1]]))
GOOD_CSV_ROW = ["What is 1 + 1?", "1", "2", "3", "4", "B"]


@PROPERTY
@given(split=st.sampled_from(["dev", "test"]), before=st.integers(0, 4), bad=BAD_CSV_ROW)
def test_a_malformed_mmlu_csv_row_in_dev_or_test_is_named_and_nothing_is_written(split, before, bad):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "mmlu"
        files = {s: root / s / f"toy_{s}.csv" for s in ("dev", "test")}
        for s, path in files.items():
            path.parent.mkdir(parents=True)
            rows = [GOOD_CSV_ROW] * before + [bad, GOOD_CSV_ROW] if s == split else [GOOD_CSV_ROW] * 5
            with open(path, "w", newline="", encoding="utf-8") as f:
                csv.writer(f, lineterminator="\n").writerows(rows)
        out = Path(folder) / "out" / "t.parquet"
        with pytest.raises(DatasetError) as error:
            prepare_task("t", "multiple_choice", {"format": "mmlu_csv", "path": str(root)}, out, shots=1)
        assert f"toy_{split}.csv: row {before + 1}:" in str(error.value)
        assert not out.parent.exists()


def test_package_data_files_are_the_files_the_loaders_read(tmp_path):
    """What a rule would list as inputs for the datasets that ship with packages (see package_data_files)."""
    from workflow_scripts.tables import read_provenance
    from workflow_scripts.tasks import package_data_files

    for kind, dataset in [("clm", {"format": "pydoc_topics"}), ("generation", {"format": "geonames"}),
                          ("multiple_choice", {"format": "geonames", "relations": ["capital"]})]:
        prepare_task("t", kind, dataset, tmp_path / f"{kind}.parquet", limit=2, shots=1)
        assert sorted(read_provenance(tmp_path / f"{kind}.parquet")["files"]) == sorted(package_data_files(dataset))
    assert package_data_files({"format": "text", "path": "x.txt"}) == []
