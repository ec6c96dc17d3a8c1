"""Confidence methods on hand-worked raw log-probabilities."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.confidence import METHODS, answer_matches, default_methods, extract_confidence, normalize_answer
from workflow_scripts.metrics import multiclass_brier_score
from workflow_scripts.recalibrate import recalibrate
from workflow_scripts.scoring import score
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
    # A task table without a scoring column predates continuation scoring: it is scored by letters.
    raw = pd.DataFrame({"item_id": ["q1"], "subject": ["s"], "option_logprobs": [np.log([0.6, 0.2, 0.2])],
                        "gold": np.array([1], dtype=np.int64)})
    write_table(raw, tmp_path / "raw.parquet")
    write_table(pd.DataFrame({"item_id": ["q1"], "scoring": ["letters"]}), tmp_path / "data.parquet")
    extract_confidence("multiple_choice", tmp_path / "raw.parquet", tmp_path / "data.parquet",
                       tmp_path / "c.parquet", methods=["option_softmax"])
    out = read_table(tmp_path / "c.parquet")
    assert list(out.columns) == ["item_id", "method", "confidence", "correct", "subject", "option_probs", "gold",
                                 "pred", "letter_mass"]
    np.testing.assert_allclose(out["option_probs"].iloc[0], [0.6, 0.2, 0.2])
    assert out["gold"].dtype == np.int64 and out["gold"].iloc[0] == 1
    assert out["pred"].iloc[0] == 0 and np.isnan(out["letter_mass"].iloc[0])  # no letter_mass in this table
    assert read_provenance(tmp_path / "c.parquet")["scoring"] == "letters"


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


# ---------------------------------------------------------------- multiple choice: letters and continuations
#
# Letters (option_softmax), two items of different option counts in one table:
#   x, 2 options: ln 0.3, ln 0.1 -> 0.75, 0.25; top A (0.75), gold A: right.
#   y, 7 options: ln 0.02, 0.04, 0.02, 0.04, 0.02, 0.04, 0.02 (sum 0.2) -> 0.1, 0.2, 0.1, 0.2, 0.1, 0.2, 0.1;
#      a three-way tie at 0.2: the first (B, index 1) is chosen; gold 3 (also 0.2): wrong, confidence 0.2.
RAW_LETTERS = pd.DataFrame({
    "item_id": ["x", "y"], "subject": ["geo", "law"],
    "option_logprobs": [np.log([0.3, 0.1]), np.log([0.02, 0.04, 0.02, 0.04, 0.02, 0.04, 0.02])],
    "option_token_counts": [[1, 1], [1] * 7],
    "option_min_logprobs": [np.log([0.3, 0.1]), np.log([0.02, 0.04, 0.02, 0.04, 0.02, 0.04, 0.02])],
    "letter_mass": [0.4, 0.2], "gold": [0, 3], "truncated": [False, False]})
DATA_LETTERS = pd.DataFrame({"item_id": ["x", "y"], "subject": ["geo", "law"], "question": ["?", "?"],
                             "prompt": ["...", "..."], "choices": [["yes", "no"], list("abcdefg")],
                             "options": [[" A", " B"], [f" {c}" for c in "ABCDEFG"]], "gold": [0, 3],
                             "scoring": "letters"})


def test_option_softmax_ragged_items_ties_and_letter_mass():
    out = METHODS["multiple_choice"]["option_softmax"](RAW_LETTERS, DATA_LETTERS)
    np.testing.assert_allclose(out["confidence"], [0.75, 0.2])
    assert out["correct"].tolist() == [True, False] and out["pred"].tolist() == [0, 1]
    np.testing.assert_allclose(out["option_probs"].iloc[0], [0.75, 0.25])
    np.testing.assert_allclose(out["option_probs"].iloc[1], [0.1, 0.2, 0.1, 0.2, 0.1, 0.2, 0.1])
    np.testing.assert_allclose(out["letter_mass"], [0.4, 0.2])
    assert out["subject"].tolist() == ["geo", "law"] and out["gold"].tolist() == [0, 3]
    # Multi-class Brier over ragged items: x 2 * 0.25^2 = 0.125; y 4 * 0.01 + 2 * 0.04 + 0.8^2 = 0.76
    assert multiclass_brier_score(out["option_probs"], out["gold"]) == pytest.approx((0.125 + 0.76) / 2)


# Continuation scoring, items of 2, 7 and 3 options in one table (p: the option's likelihood, exp of the sum):
#   a, 2 options, texts "ab" (2 chars), "abcd" (4 chars); p 1/4, 1/16; tokens 1, 4 (0.8, 0.5, 0.5, 0.3125); gold 0
#     sum:    1/4 : 1/16               -> 0.8, 0.2;  pred 0, right
#     chars:  (1/4)^(1/2) : (1/16)^(1/4) = 1/2 : 1/2, a tie -> 0.5, 0.5; pred 0 (the first), right
#     tokens: (1/4)^1 : (1/16)^(1/4) = 1/4 : 1/2 -> 1/3, 2/3; pred 1, wrong
#     min:    1/4 : 0.3125 = 4 : 5        -> 4/9, 5/9; pred 1, wrong
#   b, 7 options; chars 2, 1, 3, 2, 1, 4, 1; tokens 1, 1, 3, 1, 1, 4, 1; gold 3
#     p     0.01, 0.2, 0.008, 0.25, 0.4, 0.0016, 0.1 (sum 0.9696)           -> pred 4, conf 0.4 / 0.9696, wrong
#     chars p^(1/chars)  0.1, 0.2, 0.2, 0.5, 0.4, 0.2, 0.1 (sum 1.7)         -> pred 3, conf 0.5 / 1.7, right
#     tokens p^(1/tokens) 0.01, 0.2, 0.2, 0.25, 0.4, 0.2, 0.1 (sum 1.36)     -> pred 4, conf 0.4 / 1.36, wrong
#     min   0.01, 0.2, 0.1 (of 0.1, 0.4, 0.2), 0.25, 0.4, 0.05 (of 0.05, 0.2, 0.4, 0.4), 0.1 (sum 1.11)
#                                                                           -> pred 4, conf 0.4 / 1.11, wrong
#   c, 3 options of one char and one token, p 0.2, 0.4, 0.4: every method 0.2, 0.4, 0.4, a tie: pred 1; gold 2, wrong
P_B = [0.01, 0.2, 0.008, 0.25, 0.4, 0.0016, 0.1]
RAW_CONT = pd.DataFrame({
    "item_id": ["a", "b", "c"], "subject": ["s1", "s2", "s1"],
    "option_logprobs": [np.log([1 / 4, 1 / 16]), np.log(P_B), np.log([0.2, 0.4, 0.4])],
    "option_token_counts": [[1, 4], [1, 1, 3, 1, 1, 4, 1], [1, 1, 1]],
    "option_min_logprobs": [np.log([0.25, 0.3125]), np.log([0.01, 0.2, 0.1, 0.25, 0.4, 0.05, 0.1]),
                            np.log([0.2, 0.4, 0.4])],
    "letter_mass": np.nan, "gold": [0, 3, 2], "truncated": False})
DATA_CONT = pd.DataFrame({
    "item_id": ["c", "b", "a"], "subject": ["s1", "s2", "s1"], "question": ["?"] * 3, "prompt": ["..."] * 3,
    "choices": [["x", "y", "z"], ["ab", "c", "def", "gh", "i", "jklm", "n"], ["ab", "abcd"]],
    "options": [[" x", " y", " z"], [" ab", " c", " def", " gh", " i", " jklm", " n"], [" ab", " abcd"]],
    "gold": [2, 3, 0], "scoring": "continuation"})
EXPECTED_CONT = {  # method: (confidence, pred, option_probs of a, b, c)
    "continuation_sum": ([0.8, 0.4 / 0.9696, 0.4], [0, 4, 1],
                         [[0.8, 0.2], np.array(P_B) / 0.9696, [0.2, 0.4, 0.4]]),
    "continuation_norm_chars": ([0.5, 0.5 / 1.7, 0.4], [0, 3, 1],
                                [[0.5, 0.5], np.array([0.1, 0.2, 0.2, 0.5, 0.4, 0.2, 0.1]) / 1.7, [0.2, 0.4, 0.4]]),
    "continuation_norm_tokens": ([2 / 3, 0.4 / 1.36, 0.4], [1, 4, 1],
                                 [[1 / 3, 2 / 3], np.array([0.01, 0.2, 0.2, 0.25, 0.4, 0.2, 0.1]) / 1.36,
                                  [0.2, 0.4, 0.4]]),
    "continuation_min": ([5 / 9, 0.4 / 1.11, 0.4], [1, 4, 1],
                         [[4 / 9, 5 / 9], np.array([0.01, 0.2, 0.1, 0.25, 0.4, 0.05, 0.1]) / 1.11, [0.2, 0.4, 0.4]]),
}


@pytest.mark.parametrize("method", list(EXPECTED_CONT))
def test_continuation_methods_hand_worked(method):
    confidence, pred, probs = EXPECTED_CONT[method]
    out = METHODS["multiple_choice"][method](RAW_CONT, DATA_CONT)
    np.testing.assert_allclose(out["confidence"], confidence)
    assert out["pred"].tolist() == pred
    assert out["correct"].tolist() == [p == g for p, g in zip(pred, [0, 3, 2])]
    for got, want in zip(out["option_probs"], probs):
        np.testing.assert_allclose(got, want)
    assert out["gold"].tolist() == [0, 3, 2] and out["subject"].tolist() == ["s1", "s2", "s1"]
    assert "letter_mass" not in out


def _harness_predictions(lls, choices):
    """lm-evaluation-harness's ConfigurableTask.process_results, output_type multiple_choice: pred (acc) and
    pred_norm (acc_norm)."""
    lls = tuple(float(x) for x in lls)
    completion_len = np.array([float(len(i)) for i in choices])
    return np.argmax(lls), np.argmax(lls / completion_len)


@pytest.mark.parametrize("seed", range(5))
def test_continuation_sum_and_norm_chars_choose_as_the_harness_acc_and_acc_norm(seed):
    rng = np.random.default_rng(seed)
    rows, data = [], []
    for i in range(200):
        n = int(rng.integers(2, 27))
        chars = rng.integers(1, 6, n)
        if i % 3 == 0:  # integer log-likelihoods: ties in the sum
            lls = -rng.integers(1, 4, n).astype(float)
        elif i % 3 == 1:  # log-likelihood a multiple of the length: ties per character
            lls = -rng.integers(1, 3, n) * chars * 0.7
        else:
            lls = -rng.exponential(5.0, n)
        choices = ["".join(rng.choice(list("abc xyz"), size=c)) for c in chars]
        rows.append({"item_id": f"q{i}", "subject": "s", "option_logprobs": lls, "gold": int(rng.integers(0, n))})
        data.append({"item_id": f"q{i}", "choices": choices})
    raw, data = pd.DataFrame(rows), pd.DataFrame(data)
    acc = METHODS["multiple_choice"]["continuation_sum"](raw, data)
    acc_norm = METHODS["multiple_choice"]["continuation_norm_chars"](raw, data)
    expected = [_harness_predictions(lls, ch) for lls, ch in zip(raw["option_logprobs"], data["choices"])]
    assert acc["pred"].tolist() == [int(p) for p, _ in expected]
    assert acc_norm["pred"].tolist() == [int(p) for _, p in expected]
    assert acc["correct"].tolist() == [int(p) == g for (p, _), g in zip(expected, raw["gold"])]
    assert acc_norm["correct"].tolist() == [int(p) == g for (_, p), g in zip(expected, raw["gold"])]
    ties = [len(set(lls)) < len(lls) for lls in raw["option_logprobs"]]
    norm_ties = [len(set(lls / np.array([len(c) for c in ch]))) < len(lls)
                 for lls, ch in zip(raw["option_logprobs"], data["choices"])]
    assert sum(ties) > 50 and sum(norm_ties) > 50  # ties were tried


def test_default_methods():
    assert default_methods("multiple_choice", "letters") == ["option_softmax"]
    assert default_methods("multiple_choice", None) == ["option_softmax"]
    assert default_methods("multiple_choice", "continuation") == [
        "continuation_sum", "continuation_norm_chars", "continuation_norm_tokens", "continuation_min"]
    assert default_methods("generation", None) == ["first_token_prob", "seq_prob", "mean_token_prob"]
    assert default_methods("clm", None) == ["max_prob"]
    assert set(default_methods("multiple_choice", "letters") + default_methods("multiple_choice", "continuation")) \
        == set(METHODS["multiple_choice"])
    with pytest.raises(ValueError, match=r"scoring must be one of \['letters', 'continuation'\], got 'bytes'"):
        default_methods("multiple_choice", "bytes")
    with pytest.raises(ValueError, match="unknown task kind 'mc'"):
        default_methods("mc", None)


def _scored(folder, n_bootstrap: int) -> pd.DataFrame:
    """The micro rows of the summary of the confidence table c.parquet in `folder`, passed through the recalibrate stage
    without recalibration methods (its "none" rows) and scored."""
    recalibrate(folder / "c.parquet", folder / "data.parquet", folder / "r.parquet", methods=[], folds=5, seed=0,
                histogram_bins=10)
    outputs = [folder / f"{name}.parquet" for name in ("s", "b", "sweep", "subjects", "curves")]
    score(folder / "r.parquet", *outputs, task="t", model="m", revision="r", step=None, epoch=None, n_bins=10,
          n_bootstrap=n_bootstrap, seed=0)
    summary = read_table(outputs[0])
    return summary[summary["aggregation"] == "micro"]


def test_extract_confidence_continuation_methods_then_score(tmp_path):
    write_table(RAW_CONT, tmp_path / "raw.parquet", {"stage": "infer"})
    write_table(DATA_CONT, tmp_path / "data.parquet")
    methods = default_methods("multiple_choice", "continuation")
    extract_confidence("multiple_choice", tmp_path / "raw.parquet", tmp_path / "data.parquet", tmp_path / "c.parquet",
                       methods=methods)
    out = read_table(tmp_path / "c.parquet")
    assert list(out.columns) == ["item_id", "method", "confidence", "correct", "subject", "option_probs", "gold",
                                 "pred"]
    assert read_provenance(tmp_path / "c.parquet")["scoring"] == "continuation"
    for method, (confidence, _, _) in EXPECTED_CONT.items():
        rows = out[out["method"] == method]
        np.testing.assert_allclose(rows["confidence"], confidence)
        assert [len(p) for p in rows["option_probs"]] == [2, 7, 3]
    summary = _scored(tmp_path, n_bootstrap=20).set_index("method")
    for method, (_, pred, probs) in EXPECTED_CONT.items():
        assert summary.loc[method, "brier_multiclass"] == pytest.approx(multiclass_brier_score(probs, [0, 3, 2]))
        assert summary.loc[method, "accuracy"] == pytest.approx(np.mean(np.array(pred) == [0, 3, 2]))
    assert summary["letter_mass"].isna().all()


@pytest.mark.parametrize("methods,scoring,message", [
    (["option_softmax"], "continuation",
     r"data\.parquet: confidence method\(s\) \['option_softmax'\] do not apply to scoring 'continuation', whose "
     r"methods are \['continuation_sum', "),
    (["option_softmax", "continuation_min"], "letters",
     r"data\.parquet: confidence method\(s\) \['continuation_min'\] do not apply to scoring 'letters', whose "
     r"methods are \['option_softmax'\]"),
    (["continuation_sum"], ["letters", "continuation"], r"scoring column must hold one value for all rows"),
    (["continuation_sum"], "bytes", r"data\.parquet: multiple-choice scoring must be one of"),
])
def test_method_that_does_not_apply_is_a_clear_error(tmp_path, methods, scoring, message):
    write_table(RAW_LETTERS, tmp_path / "raw.parquet")
    write_table(DATA_LETTERS.assign(scoring=scoring), tmp_path / "data.parquet")
    with pytest.raises(ValueError, match=message):
        extract_confidence("multiple_choice", tmp_path / "raw.parquet", tmp_path / "data.parquet",
                           tmp_path / "o", methods=methods)
    assert not (tmp_path / "o").exists()


def test_extract_confidence_option_softmax_keeps_letter_mass(tmp_path):
    write_table(RAW_LETTERS, tmp_path / "raw.parquet")
    write_table(DATA_LETTERS, tmp_path / "data.parquet")
    extract_confidence("multiple_choice", tmp_path / "raw.parquet", tmp_path / "data.parquet", tmp_path / "c.parquet",
                       methods=default_methods("multiple_choice", "letters"))
    out = read_table(tmp_path / "c.parquet")
    np.testing.assert_allclose(out["letter_mass"], [0.4, 0.2])
    summary = _scored(tmp_path, n_bootstrap=0)
    assert summary["letter_mass"].tolist() == pytest.approx([0.3])
    assert summary["brier_multiclass"].tolist() == pytest.approx([(0.125 + 0.76) / 2])


@pytest.mark.parametrize("method,raw_change,data_change,message", [
    ("continuation_norm_tokens", {"option_token_counts": None}, {},
     r"raw\.parquet: missing columns \['option_token_counts'\] \(needed by the multiple_choice"),
    ("continuation_norm_chars", {}, {"choices": None}, r"data\.parquet: missing columns \['choices'\]"),
    ("continuation_min", {"option_min_logprobs": None}, {}, r"missing columns \['option_min_logprobs'\]"),
    ("continuation_norm_chars", {}, {"choices": [["x", "y"], list("abcdefg"), ["ab", "abcd"]]},
     r"method 'continuation_norm_chars': item 'c': option_logprobs holds 3 values for 2 options"),
    ("continuation_norm_chars", {}, {"choices": [["x", "", "z"], list("abcdefg"), ["ab", "abcd"]]},
     r"item 'c': an option text is empty"),
    ("continuation_norm_tokens", {"option_token_counts": [[1, 0], [1] * 7, [1, 1, 1]]}, {},
     r"item 'a': option_token_counts must be whole numbers >= 1, got \[1\.0, 0\.0\]"),
    ("continuation_min", {"option_min_logprobs": [[-1.0], [-1.0] * 7, [-1.0] * 3]}, {},
     r"item 'a': option_min_logprobs holds 1 values for 2 options"),
    ("continuation_sum", {"gold": [0, 7, 2]}, {}, r"item 'b': gold must be an option index within \[0, 7\), got 7"),
    ("continuation_sum", {"option_logprobs": [[np.nan, -1.0], np.log(P_B), [-1.0] * 3]}, {},
     r"raw\.parquet: row 1 \(item 'a'\): option_logprobs holds nan: a log-probability is <= 0"),
    ("continuation_sum", {"option_logprobs": [[], np.log(P_B), [-1.0] * 3]}, {},
     r"item 'a': option_logprobs must hold one value per option, at least one"),
])
def test_continuation_methods_reject_bad_tables(tmp_path, method, raw_change, data_change, message):
    def changed(table, change):
        table = table.drop(columns=[c for c, v in change.items() if v is None])
        return table.assign(**{c: v for c, v in change.items() if v is not None})
    write_table(changed(RAW_CONT, raw_change), tmp_path / "raw.parquet")
    write_table(changed(DATA_CONT, data_change), tmp_path / "data.parquet")
    with pytest.raises(ValueError, match=message):
        extract_confidence("multiple_choice", tmp_path / "raw.parquet", tmp_path / "data.parquet",
                           tmp_path / "o", methods=[method])
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- log-probabilities that are none
#
# A log-probability is <= 0 (-inf: probability 0). NaN or a positive value (+inf) anywhere in a column that a method
# reads is a damaged table: one error naming the file, the row (from 1), the item (and position) and the column,
# before any confidence is computed from it (exp(+inf) would be a confidence of inf, a NaN one poisons every mean).
_CLM_RAW = pd.DataFrame({"item_id": ["d"] * 3, "position": [1, 2, 3], "target_id": [5, 6, 7],
                         "target_logprob": np.log([0.5, 0.1, 0.9]), "max_logprob": np.log([0.5, 0.7, 0.9]),
                         "argmax_id": [5, 9, 7]})


def _with(table: pd.DataFrame, column: str, row: int, value) -> pd.DataFrame:
    """`table` with `value` in `column` at `row` (for list cells, `value` is the whole list)."""
    table = table.copy()
    table[column] = [value if i == row else v for i, v in enumerate(table[column])]
    return table


@pytest.mark.parametrize("kind,raw,data,methods,message", [
    ("clm", _with(_CLM_RAW, "max_logprob", 1, np.inf), pd.DataFrame({"item_id": ["d"]}), ["max_prob"],
     r"raw\.parquet: row 2 \(item 'd', position 2\): max_logprob holds inf: a log-probability is <= 0"),
    ("clm", _with(_CLM_RAW, "max_logprob", 2, np.nan), pd.DataFrame({"item_id": ["d"]}), ["max_prob"],
     r"raw\.parquet: row 3 \(item 'd', position 3\): max_logprob holds nan"),
    ("generation", _with(RAW_FACTS, "token_logprobs", 2, [-0.1, np.inf, -0.2]), DATA_FACTS, ["first_token_prob"],
     r"raw\.parquet: row 3 \(item 'f3'\): token_logprobs holds inf"),
    ("generation", _with(RAW_FACTS, "token_logprobs", 4, [0.25]), DATA_FACTS, ["seq_prob"],
     r"raw\.parquet: row 5 \(item 'f5'\): token_logprobs holds 0\.25"),
    ("multiple_choice", _with(RAW_LETTERS, "option_logprobs", 1, [-3.0, np.inf] + [-3.0] * 5), DATA_LETTERS,
     ["option_softmax"], r"raw\.parquet: row 2 \(item 'y'\): option_logprobs holds inf"),
    ("multiple_choice", _with(RAW_CONT, "option_min_logprobs", 2, [-1.0, np.nan, -1.0]), DATA_CONT,
     ["continuation_min"], r"raw\.parquet: row 3 \(item 'c'\): option_min_logprobs holds nan"),
])
def test_nan_or_positive_log_probabilities_name_the_file_and_row(tmp_path, kind, raw, data, methods, message):
    write_table(raw, tmp_path / "raw.parquet")
    write_table(data, tmp_path / "data.parquet")
    with pytest.raises(ValueError, match=message):
        extract_confidence(kind, tmp_path / "raw.parquet", tmp_path / "data.parquet", tmp_path / "o", methods=methods)
    assert not (tmp_path / "o").exists()


def test_a_p_true_table_with_inf_names_its_file_and_row(tmp_path):
    write_table(RAW_FACTS, tmp_path / "raw.parquet")
    write_table(DATA_FACTS, tmp_path / "data.parquet")
    judged = pd.DataFrame({"item_id": RAW_FACTS["item_id"], "option_logprobs": [[-0.5, -1.0]] * 5})
    write_table(_with(judged, "option_logprobs", 3, [np.inf, -1.0]), tmp_path / "p_true.parquet")
    with pytest.raises(ValueError, match=r"p_true\.parquet, method 'p_true': row 4 \(item 'f4'\): option_logprobs "
                                         r"holds inf"):
        extract_confidence("generation", tmp_path / "raw.parquet", tmp_path / "data.parquet", tmp_path / "o",
                           methods=["seq_prob", "p_true"], self_eval={"p_true": tmp_path / "p_true.parquet"})
    assert not (tmp_path / "o").exists()


def test_minus_inf_is_a_probability_of_zero(tmp_path):
    """-inf is a log-probability (of 0): an option, a token or a next-token maximum may hold it."""
    write_table(_with(RAW_LETTERS, "option_logprobs", 0, [np.log(0.3), -np.inf]), tmp_path / "raw.parquet")
    write_table(DATA_LETTERS, tmp_path / "data.parquet")
    extract_confidence("multiple_choice", tmp_path / "raw.parquet", tmp_path / "data.parquet", tmp_path / "c.parquet",
                       methods=["option_softmax"])
    out = read_table(tmp_path / "c.parquet")
    np.testing.assert_allclose(out["option_probs"].iloc[0], [1.0, 0.0])
    write_table(_with(RAW_FACTS, "token_logprobs", 1, [-np.inf]), tmp_path / "raw.parquet")
    write_table(DATA_FACTS, tmp_path / "data.parquet")
    extract_confidence("generation", tmp_path / "raw.parquet", tmp_path / "data.parquet", tmp_path / "c.parquet",
                       methods=["seq_prob"])
    assert read_table(tmp_path / "c.parquet").set_index("item_id").loc["f2", "confidence"] == 0.0
