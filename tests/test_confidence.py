"""Confidence methods on hand-worked raw log-probabilities."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.confidence import METHODS, answer_matches, extract_confidence, normalize_answer
from workflow_scripts.tables import read_provenance, read_table, write_table


def test_option_softmax_hand_worked():
    # log-probs ln(0.2), ln(0.1), ln(0.05), ln(0.05): the softmax over the options renormalises to
    # 0.5, 0.25, 0.125, 0.125 -> confidence 0.5 for option A.
    raw = pd.DataFrame({"item_id": ["q1", "q2"], "subject": ["s", "s"],
                        "option_logprobs": [np.log([0.2, 0.1, 0.05, 0.05]), np.log([0.1, 0.3, 0.1, 0.1])],
                        "gold": [0, 2]})
    out = METHODS["multiple_choice"]["option_softmax"](raw, None)
    np.testing.assert_allclose(out["confidence"], [0.5, 0.5])
    assert out["correct"].tolist() == [True, False]


def test_clm_max_prob():
    raw = pd.DataFrame({"item_id": ["d"] * 3, "position": [1, 2, 3], "target_id": [5, 6, 7],
                        "target_logprob": np.log([0.5, 0.1, 0.9]), "max_logprob": np.log([0.5, 0.7, 0.9]),
                        "argmax_id": [5, 9, 7]})
    out = METHODS["clm"]["max_prob"](raw, None)
    np.testing.assert_allclose(out["confidence"], [0.5, 0.7, 0.9])
    assert out["correct"].tolist() == [True, False, True]


RAW_FACTS = pd.DataFrame({
    "item_id": ["f1", "f2"], "token_ids": [[11, 12], [20]],
    "token_logprobs": [np.log([0.8, 0.5]), np.log([0.3])],
    "generated": [" Paris is", " Lyon"], "answer_text": ["Paris is", "Lyon"],
    "gold_first_ids": [[11], [21, 22]]})
DATA_FACTS = pd.DataFrame({"item_id": ["f2", "f1"], "aliases": [["Marseille"], ["Paris"]]})


def test_facts_methods_hand_worked():
    m = METHODS["generation"]
    first = m["first_token_prob"](RAW_FACTS, DATA_FACTS)
    np.testing.assert_allclose(first["confidence"], [0.8, 0.3])
    assert first["correct"].tolist() == [True, False]
    seq = m["seq_prob"](RAW_FACTS, DATA_FACTS)
    np.testing.assert_allclose(seq["confidence"], [0.4, 0.3])
    assert seq["correct"].tolist() == [True, False]  # "Paris is" starts with the alias "Paris"
    mean = m["mean_token_prob"](RAW_FACTS, DATA_FACTS)
    np.testing.assert_allclose(mean["confidence"], [0.65, 0.3])


@pytest.mark.parametrize("answer,aliases,ok", [
    ("Paris", ["Paris"], True), ("paris.", ["Paris"], True), ("the Euro", ["Euro", "EUR"], True),
    ("Washington, D.C", ["Washington, D.C."], True), ("Parisian", ["Paris"], False),
    ("", ["Paris"], False), ("North America", ["America"], False),
])
def test_answer_matches(answer, aliases, ok):
    assert answer_matches(answer, aliases) is ok


def test_normalize_answer():
    assert normalize_answer("  The  Euro!! ") == "euro"


def test_extract_confidence_writes_one_row_per_item_and_method(tmp_path):
    write_table(RAW_FACTS, tmp_path / "raw.parquet", {"stage": "infer"})
    write_table(DATA_FACTS, tmp_path / "data.parquet")
    extract_confidence("generation", tmp_path / "raw.parquet", tmp_path / "data.parquet", tmp_path / "c.parquet",
                       methods=["first_token_prob", "seq_prob"])
    out = read_table(tmp_path / "c.parquet")
    assert list(out.columns[:4]) == ["item_id", "method", "confidence", "correct"]
    assert out.groupby("method").size().to_dict() == {"first_token_prob": 2, "seq_prob": 2}
    assert read_provenance(tmp_path / "c.parquet")["inference"]["stage"] == "infer"
    assert math.isclose(out.query("method == 'seq_prob'")["confidence"].iloc[0], 0.4)


def test_unknown_method_names_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown confidence method.*'nope'.*first_token_prob"):
        extract_confidence("generation", tmp_path / "r", tmp_path / "d", tmp_path / "o", methods=["nope"])
    assert not (tmp_path / "o").exists()
