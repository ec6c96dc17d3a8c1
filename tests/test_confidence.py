"""Confidence methods on hand-worked raw log-probabilities."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.confidence import METHODS, answer_matches, extract_confidence, normalize_answer
from workflow_scripts.metrics import multiclass_brier_score
from workflow_scripts.tables import read_provenance, read_table, write_table


def test_option_softmax_hand_worked():
    # log-probs ln(0.2), ln(0.1), ln(0.05), ln(0.05): the softmax over the options renormalises to
    # 0.5, 0.25, 0.125, 0.125 -> confidence 0.5 for option A; ln(0.1), ln(0.3), ln(0.1), ln(0.1) -> 1/6, 1/2, 1/6, 1/6.
    raw = pd.DataFrame({"item_id": ["q1", "q2"], "subject": ["s", "t"],
                        "option_logprobs": [np.log([0.2, 0.1, 0.05, 0.05]), np.log([0.1, 0.3, 0.1, 0.1])],
                        "gold": [0, 2]})
    out = METHODS["multiple_choice"]["option_softmax"](raw, None)
    np.testing.assert_allclose(out["confidence"], [0.5, 0.5])
    assert out["correct"].tolist() == [True, False]
    assert out["subject"].tolist() == ["s", "t"]
    np.testing.assert_allclose(np.stack(out["option_probs"]), [[0.5, 0.25, 0.125, 0.125], [1 / 6, 1 / 2, 1 / 6, 1 / 6]])
    assert out["gold"].dtype == np.int64 and out["gold"].tolist() == [0, 2]
    # Multi-class Brier: q1 0.5^2 + 0.25^2 + 2 * 0.125^2 = 0.34375; q2 (1 + 9 + 25 + 1) / 36 = 1
    assert multiclass_brier_score(out["option_probs"], out["gold"]) == pytest.approx((0.34375 + 1.0) / 2)


def test_clm_max_prob():
    raw = pd.DataFrame({"item_id": ["d"] * 3, "position": [1, 2, 3], "target_id": [5, 6, 7],
                        "target_logprob": np.log([0.5, 0.1, 0.9]), "max_logprob": np.log([0.5, 0.7, 0.9]),
                        "argmax_id": [5, 9, 7]})
    out = METHODS["clm"]["max_prob"](raw, None)
    np.testing.assert_allclose(out["confidence"], [0.5, 0.7, 0.9])
    assert out["correct"].tolist() == [True, False, True]


# f1, f2: the first answer token carries text (first_text 0).
# f3, f4: a digit-splitting tokenizer writes " 1945" as "▁" (29871), "1" (31), "9" ...: first_text 1, and the
#   gold's first text token is "1" (31). f3 starts with "1": right, confidence 0.9 * 0.5; f4 starts with "2"
#   (32): wrong, confidence 0.9 * 0.4.
# f5: first_text (2) is past the answer's only token: that token stands for it (not "1": wrong, 0.6).
RAW_FACTS = pd.DataFrame({
    "item_id": ["f1", "f2", "f3", "f4", "f5"],
    "token_ids": [[11, 12], [20], [29871, 31, 32], [29871, 32, 33], [29871]],
    "token_logprobs": [np.log([0.8, 0.5]), np.log([0.3]), np.log([0.9, 0.5, 0.8]), np.log([0.9, 0.4, 0.5]),
                       np.log([0.6])],
    "generated": [" Paris is", " Lyon", " 1945", " 2000", " "], "answer_text": ["Paris is", "Lyon", "1945", "20", ""],
    "gold_first_ids": [[11], [21, 22], [31], [31], [31]],
    "first_text": [0, 0, 1, 1, 2]})
DATA_FACTS = pd.DataFrame({"item_id": ["f2", "f1", "f3", "f4", "f5"],
                           "relation": ["capital", "capital", "founded", "founded", "founded"],
                           "aliases": [["Marseille"], ["Paris"], ["1945"], ["1945"], ["1945"]]})


def test_first_token_prob_uses_the_first_token_carrying_text():
    out = METHODS["generation"]["first_token_prob"](RAW_FACTS, DATA_FACTS)
    np.testing.assert_allclose(out["confidence"], [0.8, 0.3, 0.45, 0.36, 0.6])
    assert out["correct"].tolist() == [True, False, True, False, False]
    assert out["relation"].tolist() == ["capital", "capital", "founded", "founded", "founded"]


@pytest.mark.parametrize("column,value,message", [
    ("first_text", [0, 0, -1, 1, 2], r"item 'f3': first_text must be a token index >= 0, got -1"),
    ("token_ids", [[11, 12], [], [1, 2, 3], [1, 2, 3], [1]], r"item 'f2': .* at least one; got 0 and 1"),
])
def test_first_token_prob_rejects_bad_rows(column, value, message):
    with pytest.raises(ValueError, match=message):
        METHODS["generation"]["first_token_prob"](RAW_FACTS.assign(**{column: value}), DATA_FACTS)


@pytest.mark.parametrize("match,seq_correct", [("prefix", [True, False, True, False, False]),
                                               ("exact", [False, False, True, False, False])])
def test_answer_methods_hand_worked(match, seq_correct):
    m = METHODS["generation"]
    seq = m["seq_prob"](RAW_FACTS, DATA_FACTS, match=match)
    np.testing.assert_allclose(seq["confidence"], [0.4, 0.3, 0.36, 0.18, 0.6])
    assert seq["correct"].tolist() == seq_correct  # prefix: "Paris is" starts with the alias "Paris"
    mean = m["mean_token_prob"](RAW_FACTS, DATA_FACTS, match=match)
    np.testing.assert_allclose(mean["confidence"], [0.65, 0.3, 2.2 / 3, 1.8 / 3, 0.6])
    assert mean["correct"].tolist() == seq_correct
    assert seq["relation"].tolist() == mean["relation"].tolist() == DATA_FACTS.set_index("item_id").loc[
        RAW_FACTS["item_id"], "relation"].tolist()


@pytest.mark.parametrize("answer,aliases,prefix,exact", [
    ("Paris", ["Paris"], True, True), ("paris.", ["Paris"], True, True), ("the Euro", ["Euro", "EUR"], True, True),
    ("Washington, D.C", ["Washington, D.C."], True, True), ("Parisian", ["Paris"], False, False),
    ("", ["Paris"], False, False), ("North America", ["America"], False, False),
    ("Paris, France", ["Paris"], True, False), ("Paris", ["Paris France"], False, False),
    ("anything", [""], False, False), ("  An  Apple a day ", ["apple day"], True, True),
])
def test_answer_matches(answer, aliases, prefix, exact):
    assert answer_matches(answer, aliases, "prefix") is prefix
    assert answer_matches(answer, aliases, "exact") is exact


def test_answer_matches_rejects_unknown_rule():
    with pytest.raises(ValueError, match=r"match must be one of \['exact', 'prefix'\], got 'fuzzy'"):
        answer_matches("Paris", ["Paris"], "fuzzy")


def test_normalize_answer():
    assert normalize_answer("  The  Euro!! ") == "euro"
    assert normalize_answer("A theory, an Answer") == "theory answer"


def test_extract_confidence_writes_one_row_per_item_and_method(tmp_path):
    write_table(RAW_FACTS, tmp_path / "raw.parquet", {"stage": "infer"})
    write_table(DATA_FACTS, tmp_path / "data.parquet")
    extract_confidence("generation", tmp_path / "raw.parquet", tmp_path / "data.parquet", tmp_path / "c.parquet",
                       methods=["first_token_prob", "seq_prob"])
    out = read_table(tmp_path / "c.parquet")
    assert list(out.columns) == ["item_id", "method", "confidence", "correct", "relation"]
    assert out.groupby("method").size().to_dict() == {"first_token_prob": 5, "seq_prob": 5}
    provenance = read_provenance(tmp_path / "c.parquet")
    assert provenance["inference"]["stage"] == "infer" and provenance["match"] == "prefix"
    assert math.isclose(out.query("method == 'seq_prob'")["confidence"].iloc[0], 0.4)
    assert out.query("method == 'seq_prob'")["correct"].iloc[0]

    extract_confidence("generation", tmp_path / "raw.parquet", tmp_path / "data.parquet", tmp_path / "c.parquet",
                       methods=["seq_prob"], match="exact")
    out = read_table(tmp_path / "c.parquet")
    assert not out["correct"].iloc[0] and read_provenance(tmp_path / "c.parquet")["match"] == "exact"


def test_extract_confidence_keeps_option_probabilities(tmp_path):
    raw = pd.DataFrame({"item_id": ["q1"], "subject": ["s"], "option_logprobs": [np.log([0.6, 0.2, 0.2])],
                        "gold": np.array([1], dtype=np.int64)})
    write_table(raw, tmp_path / "raw.parquet")
    write_table(pd.DataFrame({"item_id": ["q1"]}), tmp_path / "data.parquet")
    extract_confidence("multiple_choice", tmp_path / "raw.parquet", tmp_path / "data.parquet",
                       tmp_path / "c.parquet", methods=["option_softmax"])
    out = read_table(tmp_path / "c.parquet")
    assert list(out.columns) == ["item_id", "method", "confidence", "correct", "subject", "option_probs", "gold"]
    np.testing.assert_allclose(out["option_probs"].iloc[0], [0.6, 0.2, 0.2])
    assert out["gold"].dtype == np.int64 and out["gold"].iloc[0] == 1


def test_unknown_method_names_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown confidence method.*'nope'.*first_token_prob"):
        extract_confidence("generation", tmp_path / "r", tmp_path / "d", tmp_path / "o", methods=["nope"])
    with pytest.raises(ValueError, match="match must be one of"):
        extract_confidence("generation", tmp_path / "r", tmp_path / "d", tmp_path / "o", methods=["seq_prob"],
                           match="loose")
    assert not (tmp_path / "o").exists()


def test_extract_confidence_errors_name_the_file(tmp_path):
    write_table(DATA_FACTS, tmp_path / "data.parquet")
    write_table(RAW_FACTS.drop(columns="first_text"), tmp_path / "old.parquet")
    with pytest.raises(ValueError, match=r"old\.parquet: missing columns \['first_text'\]"):
        extract_confidence("generation", tmp_path / "old.parquet", tmp_path / "data.parquet", tmp_path / "o",
                           methods=["seq_prob"])
    write_table(DATA_FACTS.drop(columns="relation"), tmp_path / "norel.parquet")
    write_table(RAW_FACTS, tmp_path / "raw.parquet")
    with pytest.raises(ValueError, match=r"norel\.parquet: missing columns \['relation'\]"):
        extract_confidence("generation", tmp_path / "raw.parquet", tmp_path / "norel.parquet", tmp_path / "o",
                           methods=["seq_prob"])
    write_table(DATA_FACTS.iloc[1:], tmp_path / "part.parquet")
    with pytest.raises(ValueError, match=r"raw\.parquet, method 'seq_prob': 1 item_id\(s\) of the inference table "
                                         r"are not in the task table \(e\.g\. 'f2'\)"):
        extract_confidence("generation", tmp_path / "raw.parquet", tmp_path / "part.parquet", tmp_path / "o",
                           methods=["seq_prob"])
    assert not (tmp_path / "o").exists()
