"""Tests of the calibration metrics and of the score / summarize stages."""
import bisect
import time

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import brier_score_loss
from torchmetrics.functional.classification import binary_auroc, binary_calibration_error

from workflow_scripts import metrics as M
from workflow_scripts.tables import read_provenance, read_table, write_table

# ---------------------------------------------------------------- hand-worked example
#
#   confidence  0.0    0.2    0.25   0.6    0.9    1.0
#   correct     no     no     yes    yes    no     yes
#
# 10 equal-width bins, bin i = [i/10, (i+1)/10), the last one closed:
#   0.0 -> bin 0; 0.2 (on an edge) -> bin 2; 0.25 -> bin 2; 0.6 (on an edge) -> bin 6; 0.9 and 1.0 -> bin 9.
#   bin 0: n=1, conf 0.0,                  acc 0/1 = 0.0, gap 0.0
#   bin 2: n=2, conf (0.2+0.25)/2 = 0.225, acc 1/2 = 0.5, gap 0.275
#   bin 6: n=1, conf 0.6,                  acc 1/1 = 1.0, gap 0.4
#   bin 9: n=2, conf (0.9+1.0)/2 = 0.95,   acc 1/2 = 0.5, gap 0.45
# ECE   = (1*0 + 2*0.275 + 1*0.4 + 2*0.45) / 6 = 1.85 / 6
# MCE   = 0.45
# Brier = (0 + 0.04 + 0.5625 + 0.16 + 0.81 + 0) / 6 = 1.5725 / 6
# AUROC: correct {0.25, 0.6, 1.0} vs wrong {0.0, 0.2, 0.9}: 0.25 beats 2, 0.6 beats 2, 1.0 beats 3 -> 7/9
# ACE, 10 bins: capped at N = 6 parts of one item; edges 0.1, 0.225, 0.425, 0.75, 0.95, 1.0 put each
#   item alone in a bin -> mean |correct - conf| = (0 + 0.2 + 0.75 + 0.4 + 0.9 + 0) / 6 = 2.25 / 6
# ACE, 3 bins: parts [0, 0.2] [0.25, 0.6] [0.9, 1.0]; edges 0.225, 0.75, 1.0 (bisect_left: 1.0 -> last)
#   bins: conf 0.1 acc 0 | conf 0.425 acc 1 | conf 0.95 acc 0.5
#   -> (2*0.1 + 2*0.575 + 2*0.45) / 6 = 2.25 / 6 (the same: no bin mixes items above and below their confidence)
# ACE, 2 bins: parts [0, 0.2, 0.25] [0.6, 0.9, 1.0]; edges 0.425, 1.0
#   bins: conf 0.15 acc 1/3 | conf 2.5/3 acc 2/3 -> (|1 - 0.45| + |2 - 2.5|) / 6 = 1.05 / 6
CONF = [0.0, 0.2, 0.25, 0.6, 0.9, 1.0]
CORRECT = [False, False, True, True, False, True]


def test_reliability_bins_hand_worked():
    table = M.reliability_bins(CONF, CORRECT)
    assert list(table.columns) == ["bin", "bin_lower", "bin_upper", "count", "mean_confidence", "accuracy"]
    assert table["bin"].tolist() == list(range(10))
    assert table["bin_lower"].tolist() == pytest.approx([i / 10 for i in range(10)])
    assert table["bin_upper"].tolist() == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert table["count"].tolist() == [1, 0, 2, 0, 0, 0, 1, 0, 0, 2]
    full = table[table["count"] > 0]
    assert full["mean_confidence"].tolist() == pytest.approx([0.0, 0.225, 0.6, 0.95])
    assert full["accuracy"].tolist() == pytest.approx([0.0, 0.5, 1.0, 0.5])
    empty = table[table["count"] == 0]
    assert empty["mean_confidence"].isna().all() and empty["accuracy"].isna().all()


def test_scalar_metrics_hand_worked():
    assert M.expected_calibration_error(CONF, CORRECT) == pytest.approx(1.85 / 6)
    assert M.maximum_calibration_error(CONF, CORRECT) == pytest.approx(0.45)
    assert M.brier_score(CONF, CORRECT) == pytest.approx(1.5725 / 6)
    assert M.auroc(CONF, CORRECT) == pytest.approx(7 / 9)
    assert M.adaptive_calibration_error(CONF, CORRECT) == pytest.approx(2.25 / 6)
    assert M.adaptive_calibration_error(CONF, CORRECT, n_bins=3) == pytest.approx(2.25 / 6)
    assert M.adaptive_calibration_error(CONF, CORRECT, n_bins=2) == pytest.approx(1.05 / 6)


def test_bin_edges():
    # Every value i/10 starts bin i; 1.0 belongs to the last bin. Same with 3 bins and the float 1/3.
    edges = [i / 10 for i in range(11)]
    table = M.reliability_bins(edges, [True] * 11)
    assert table["count"].tolist() == [1] * 9 + [2]
    assert M.reliability_bins([0.0, 1 / 3, 0.5, 2 / 3, 1.0], [True] * 5, n_bins=3)["count"].tolist() == [1, 2, 2]


def test_ace_ties_follow_the_calibration_library():
    # [0.1, 0.2, 0.2, 0.4] in 2 parts: [0.1, 0.2] [0.2, 0.4]; the edge (0.2 + 0.2)/2 = 0.2 takes both 0.2s
    # (bisect_left), so the bins are {0.1, 0.2, 0.2} (acc 1/3, conf 0.5/3) and {0.4} (acc 1, conf 0.4).
    ace = M.adaptive_calibration_error([0.1, 0.2, 0.2, 0.4], [False, True, False, True], n_bins=2)
    assert ace == pytest.approx((3 * abs(1 / 3 - 0.5 / 3) + 1 * abs(1 - 0.4)) / 4)
    # All equal: every edge collapses onto 0.3, one bin holds everything -> |acc - 0.3|.
    assert M.adaptive_calibration_error([0.3] * 4, [True, False, False, False]) == pytest.approx(0.05)


def test_auroc_ties_count_half_and_one_class_is_nan():
    # correct {0.5, 0.7} vs wrong {0.3, 0.5}: 0.5 beats 0.3, ties 0.5 (half), 0.7 beats both -> 3.5/4
    assert M.auroc([0.3, 0.5, 0.5, 0.7], [False, True, False, True]) == pytest.approx(0.875)
    assert M.auroc([0.5, 0.5], [True, False]) == pytest.approx(0.5)
    assert np.isnan(M.auroc([0.2, 0.9], [True, True]))


def test_correct_may_be_zero_one_numbers():
    assert M.brier_score(CONF, np.array(CORRECT, dtype=int)) == M.brier_score(CONF, CORRECT)
    assert M.expected_calibration_error(CONF, np.array(CORRECT, dtype=float)) == pytest.approx(1.85 / 6)


# Multi-class Brier, by hand:
#   p = (0.7, 0.2, 0.1), gold 0: 0.09 + 0.04 + 0.01 = 0.14
#   p = (0.2, 0.5, 0.3), gold 2: 0.04 + 0.25 + 0.49 = 0.78
#   p = (1, 0, 0),       gold 0: 0
# mean 0.92 / 3. The top-label Brier of the same items (confidence 0.7 right, 0.5 wrong, 1.0 right):
#   (0.09 + 0.25 + 0) / 3 = 0.34 / 3
OPTION_PROBS = [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [1.0, 0.0, 0.0]]
GOLD = [0, 2, 0]


def test_multiclass_brier_hand_worked():
    assert M.multiclass_brier_score(OPTION_PROBS, GOLD) == pytest.approx(0.92 / 3)
    assert M.multiclass_brier_score([np.array(p) for p in OPTION_PROBS], np.array(GOLD, dtype=float)) == \
        pytest.approx(0.92 / 3)
    assert M.brier_score([0.7, 0.5, 1.0], [True, False, True]) == pytest.approx(0.34 / 3)
    result = M.calibration_metrics([0.7, 0.5, 1.0], [True, False, True], n_bootstrap=0, option_probs=OPTION_PROBS,
                                   gold=GOLD)
    assert result["brier_multiclass"] == pytest.approx(0.92 / 3) and result["brier"] == pytest.approx(0.34 / 3)


@pytest.mark.parametrize("n_options", [2, 4, 10])
def test_multiclass_brier_matches_sklearn(n_options):
    # sklearn sums over classes for multi-class targets ([0, 2]) but halves binary ones unless told not to.
    rng = np.random.default_rng(n_options)
    probs = rng.dirichlet(np.full(n_options, 0.5), size=500)
    gold = rng.integers(0, n_options, 500)
    expected = brier_score_loss(gold, probs, labels=np.arange(n_options), scale_by_half=False)
    assert M.multiclass_brier_score(list(probs), gold) == pytest.approx(expected, abs=1e-12)


def test_multiclass_brier_items_of_different_option_counts():
    # 2, 7 and 3 options: (0.2^2 + 0.2^2) + (6 * (1/7)^2 + (6/7)^2) + (0.5^2 + 0.5^2 + 0) = 0.08 + 6/7 + 0.5
    probs = [[0.8, 0.2], np.full(7, 1 / 7), [0.5, 0.0, 0.5]]
    assert M.multiclass_brier_score(probs, [0, 6, 2]) == pytest.approx((0.08 + 6 / 7 + 0.5) / 3)
    # the same as padding every item with options of probability 0 that are never gold
    padded = [np.pad(p, (0, 7 - len(p))) for p in probs]
    assert M.multiclass_brier_score(probs, [0, 6, 2]) == pytest.approx(M.multiclass_brier_score(padded, [0, 6, 2]))


@pytest.mark.parametrize("probs, gold, message", [
    ([[0.5, 0.5], []], [0, 0], r"a non-empty list per item: 1 of 2 items do not \(e\.g\. shape \(0,\) at position 1"),
    ([[0.5, 0.5], None], [0, 0], r"shape \(\) at position 1"),
    ([[0.5, 0.5], [1.0]], [0, 1], r"gold must be an option index within \[0, 1\) \(its item's number of options\): "
                                  r"1 of 2 values are not \(e\.g\. 1 at position 1\)"),
    ([[0.5, 0.5], [0.5, 0.6]], [0, 0], r"summing to 1: 1 of 2 items are not \(e\.g\. \[0\.5, 0\.6\] at position 1\)"),
    ([[0.5, 0.5], [np.nan, 1.0]], [0, 0], r"within \[0, 1\] summing to 1: 1 of 2"),
    ([[0.5, 0.5]], [2], r"gold must be an option index within \[0, 2\) .*: 1 of 1 .*2 at position 0"),
    ([[0.5, 0.5], [0.5, 0.5]], [0, 0.5], r"gold must be .*0\.5 at position 1"),
    ([[0.5, 0.5]], [0, 1], r"option_probs and gold differ in length: 1 vs 2"),
    ([], [], r"no items"),
])
def test_multiclass_brier_invalid_input(probs, gold, message):
    with pytest.raises(ValueError, match=message):
        M.multiclass_brier_score(probs, gold)


def test_multiclass_brier_needs_option_probs_and_gold_together():
    with pytest.raises(ValueError, match="option_probs and gold come together"):
        M.calibration_metrics(CONF, CORRECT, option_probs=[[1.0]] * 6)
    with pytest.raises(ValueError, match="option_probs and confidence differ in length: 3 vs 6"):
        M.calibration_metrics(CONF, CORRECT, option_probs=OPTION_PROBS, gold=GOLD)


# ---------------------------------------------------------------- against independent implementations
#
# torchmetrics bins with torch.bucketize(conf, torch.linspace(0, 1, n + 1), right=True) - 1, i.e. also
# [lower, upper) bins, but (a) its float edges are not all i/n (linspace(0, 1, 11)[3] is
# 0.30000000000000004, so 0.3 lands in bin 2 there and in bin 3 here) and (b) 1.0 gets a bin of its
# own instead of joining the last one. The random confidences below therefore keep away from every edge.

def _off_edge_sample(seed, n_bins, size=3000):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.0, 1.0, size)
    edges = np.arange(n_bins + 1) / n_bins
    conf = conf[np.min(np.abs(conf[:, None] - edges[None, :]), axis=1) > 1e-6]
    correct = rng.uniform(size=len(conf)) < conf ** 1.5
    return conf, correct


@pytest.mark.parametrize("n_bins", [1, 5, 10, 15])
@pytest.mark.parametrize("seed", [0, 1])
def test_ece_and_mce_match_torchmetrics(seed, n_bins):
    conf, correct = _off_edge_sample(seed, n_bins)
    preds, target = torch.tensor(conf, dtype=torch.float64), torch.tensor(correct.astype(int))
    ece = binary_calibration_error(preds, target, n_bins=n_bins, norm="l1").item()
    mce = binary_calibration_error(preds, target, n_bins=n_bins, norm="max").item()
    assert M.expected_calibration_error(conf, correct, n_bins) == pytest.approx(ece, abs=1e-12)
    assert M.maximum_calibration_error(conf, correct, n_bins) == pytest.approx(mce, abs=1e-12)


@pytest.mark.parametrize("decimals", [None, 2, 1])
def test_auroc_matches_torchmetrics(decimals):
    rng = np.random.default_rng(3)
    conf = rng.uniform(size=2000)
    correct = rng.uniform(size=2000) < conf
    if decimals is not None:  # many ties
        conf = np.round(conf, decimals)
    expected = binary_auroc(torch.tensor(conf), torch.tensor(correct.astype(int))).item()
    assert M.auroc(conf, correct) == pytest.approx(expected, abs=1e-6)  # torchmetrics returns float32


def naive_ace(probs, labels, num_bins):
    """The equal-mass ECE of the calibration library, written out plainly from its description."""
    ordered = sorted(float(p) for p in probs)
    num_bins = min(num_bins, len(ordered))
    parts = [list(part) for part in np.array_split(ordered, num_bins)]
    edges = [(parts[i][-1] + parts[i + 1][0]) / 2.0 for i in range(len(parts) - 1)] + [1.0]
    edges = sorted(set(edges))
    binned = [[] for _ in edges]
    for p, y in zip(probs, labels):
        binned[bisect.bisect_left(edges, float(p))].append((float(p), float(y)))
    error = 0.0
    for items in binned:
        if items:
            mean_prob = sum(p for p, _ in items) / len(items)
            mean_label = sum(y for _, y in items) / len(items)
            error += len(items) / len(probs) * abs(mean_label - mean_prob)
    return error


@pytest.mark.parametrize("size", [1, 7, 10, 23, 500])
@pytest.mark.parametrize("n_bins", [1, 3, 10, 15])
@pytest.mark.parametrize("decimals", [None, 1])
def test_ace_matches_naive_loop(size, n_bins, decimals):
    rng = np.random.default_rng(size * 100 + n_bins)
    conf = rng.beta(4, 2, size)
    if decimals is not None:  # ties, and edges that coincide with values
        conf = np.round(conf, decimals)
    correct = rng.uniform(size=size) < conf
    assert M.adaptive_calibration_error(conf, correct, n_bins) == pytest.approx(
        naive_ace(conf, correct, n_bins), abs=1e-12)


# ---------------------------------------------------------------- properties

items = st.lists(st.tuples(st.floats(0.0, 1.0), st.booleans()), min_size=1, max_size=60)
bin_counts = st.integers(1, 20)


@settings(deadline=None)
@given(items, bin_counts)
def test_ece_bounded_by_mce_and_unit_interval(data, n_bins):
    conf, correct = zip(*data)
    ece = M.expected_calibration_error(conf, correct, n_bins)
    mce = M.maximum_calibration_error(conf, correct, n_bins)
    assert 0.0 <= ece <= 1.0 and 0.0 <= mce <= 1.0
    assert ece <= mce + 1e-12
    assert 0.0 <= M.adaptive_calibration_error(conf, correct, n_bins) <= 1.0


@settings(deadline=None)
@given(items, bin_counts)
def test_reliability_counts_sum_to_n(data, n_bins):
    conf, correct = zip(*data)
    table = M.reliability_bins(conf, correct, n_bins)
    assert len(table) == n_bins and table["count"].sum() == len(conf)
    full = table[table["count"] > 0]
    assert ((full["mean_confidence"] >= full["bin_lower"] - 1e-12)
            & (full["mean_confidence"] <= full["bin_upper"] + 1e-12)).all()


@settings(deadline=None)
@given(items, bin_counts, st.randoms(use_true_random=False))
def test_ece_invariant_to_item_order(data, n_bins, random):
    shuffled = random.sample(data, len(data))
    assert M.expected_calibration_error(*zip(*shuffled), n_bins) == pytest.approx(
        M.expected_calibration_error(*zip(*data), n_bins), abs=1e-12)
    assert M.adaptive_calibration_error(*zip(*shuffled), n_bins) == pytest.approx(
        M.adaptive_calibration_error(*zip(*data), n_bins), abs=1e-12)


# A group of m items at confidence k/m with exactly k correct is calibrated; so is any union of such
# groups in any bin (the bin's accuracy and mean confidence are both sum(k) / sum(m)).
groups = st.lists(st.integers(1, 12).flatmap(lambda m: st.tuples(st.just(m), st.integers(0, m))), min_size=1,
                  max_size=15)


@settings(deadline=None)
@given(groups, bin_counts)
def test_calibrated_construction_has_zero_ece(group_list, n_bins):
    conf = [k / m for m, k in group_list for _ in range(m)]
    correct = [i < k for m, k in group_list for i in range(m)]
    assert M.expected_calibration_error(conf, correct, n_bins) == pytest.approx(0.0, abs=1e-12)
    assert M.maximum_calibration_error(conf, correct, n_bins) == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- bootstrap

def _overconfident(size, seed=0):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.5, 1.0, size)
    return conf, rng.uniform(size=size) < conf - 0.1


def test_bootstrap_contains_point_and_is_deterministic():
    conf, correct = _overconfident(2000)
    ece = M.expected_calibration_error(conf, correct)
    low, high = M.bootstrap_ece_interval(conf, correct, seed=7)
    assert low < ece < high
    assert M.bootstrap_ece_interval(conf, correct, seed=7) == (low, high)
    assert M.bootstrap_ece_interval(conf, correct, seed=8) != (low, high)


def test_bootstrap_narrows_with_more_data():
    widths = []
    for size in (200, 2000, 20000):
        low, high = M.bootstrap_ece_interval(*_overconfident(size))
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]


def naive_bootstrap_eces(conf, correct, n_bins, n_bootstrap, seed, units=None, strata=None):
    """ECEs of resamples drawn by plain indexing: each stratum's units with replacement, then their rows."""
    rng = np.random.default_rng(seed)
    units = np.arange(len(conf)) if units is None else np.asarray(units)
    strata = np.zeros(len(conf)) if strata is None else np.asarray(strata)
    rows_of = {unit: np.flatnonzero(units == unit) for unit in np.unique(units)}
    by_stratum = [[unit for unit, rows in rows_of.items() if strata[rows[0]] == s] for s in np.unique(strata)]
    eces = []
    for _ in range(n_bootstrap):
        rows = np.concatenate([rows_of[members[i]] for members in by_stratum
                               for i in rng.integers(0, len(members), len(members))])
        eces.append(M.expected_calibration_error(conf[rows], correct[rows], n_bins))
    return np.array(eces)


def _assert_same_interval(low, high, eces, tolerance=0.1):
    expected_low, expected_high = np.quantile(eces, [0.025, 0.975])
    width = expected_high - expected_low
    assert low == pytest.approx(expected_low, abs=tolerance * width)
    assert high == pytest.approx(expected_high, abs=tolerance * width)


def _two_strata(size, seed):
    """Rows of two strata, "well" calibrated and "over"-confident, of sizes 2:1."""
    conf, correct = _overconfident(size, seed)
    strata = np.where(np.arange(size) % 3 == 0, "over", "well")
    correct = np.where(strata == "well", np.random.default_rng(seed + 1).uniform(size=size) < conf, correct)
    return conf, correct, strata


@pytest.mark.parametrize("stratified", [False, True])
def test_bootstrap_agrees_with_index_resampling(monkeypatch, stratified):
    conf, correct, strata = _two_strata(3000, seed=1)
    strata = strata if stratified else None
    eces = naive_bootstrap_eces(conf, correct, 10, 1500, seed=2, strata=strata)
    for exact_cell_size in (0, 10**9):  # every cell by its normal limit / row by row
        monkeypatch.setattr(M, "_EXACT_CELL_SIZE", exact_cell_size)
        _assert_same_interval(*M.bootstrap_ece_interval(conf, correct, n_bootstrap=3000, seed=3, strata=strata),
                              eces)


def _documents(n_docs, seed):
    """CLM-like rows: documents of 1 to 15 tokens whose accuracy shifts together (a per-document effect)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 16, n_docs)
    doc = np.repeat(np.arange(n_docs), lengths)
    conf = rng.uniform(0.2, 1.0, len(doc))
    shift = rng.normal(0.0, 0.25, n_docs)[doc]
    correct = rng.uniform(size=len(doc)) < np.clip(conf - 0.05 + shift, 0.0, 1.0)
    return conf, correct, np.array([f"doc{d}" for d in doc])


@pytest.mark.parametrize("chunk_elements", [2**22, 50])  # all resamples at once / a few at a time
@pytest.mark.parametrize("stratified", [False, True])
def test_bootstrap_over_units_agrees_with_unit_resampling(monkeypatch, chunk_elements, stratified):
    monkeypatch.setattr(M, "_CHUNK_ELEMENTS", chunk_elements)
    conf, correct, docs = _documents(120, seed=4)
    strata = np.array(["a" if doc[-1] in "123" else "b" for doc in docs]) if stratified else None
    eces = naive_bootstrap_eces(conf, correct, 10, 2000, seed=5, units=docs, strata=strata)
    low, high = M.bootstrap_ece_interval(conf, correct, n_bootstrap=3000, seed=6, units=docs, strata=strata)
    _assert_same_interval(low, high, eces)
    assert M.bootstrap_ece_interval(conf, correct, n_bootstrap=3000, seed=6, units=docs, strata=strata) == (low, high)


def test_bootstrap_over_documents_does_not_shrink_when_tokens_repeat():
    conf, correct, docs = _documents(200, seed=7)
    repeated = np.repeat(np.arange(len(conf)), 5)  # every token five times, within its document
    conf5, correct5, docs5 = conf[repeated], correct[repeated], docs[repeated]
    assert M.expected_calibration_error(conf5, correct5) == pytest.approx(M.expected_calibration_error(conf, correct))

    def width(*args, **kwargs):
        low, high = M.bootstrap_ece_interval(*args, n_bootstrap=2000, seed=0, **kwargs)
        return high - low

    by_token, by_token5 = width(conf, correct), width(conf5, correct5)
    by_doc, by_doc5 = width(conf, correct, units=docs), width(conf5, correct5, units=docs5)
    assert by_token5 < 0.6 * by_token  # about 1/sqrt(5): rows wrongly taken as independent
    # Five copies of a document weigh five times as much and are drawn together: the same resamples.
    assert by_doc5 == pytest.approx(by_doc, rel=1e-9)
    assert by_doc5 > 2 * by_token5 and by_doc > by_token


@pytest.mark.parametrize("rows_per_unit", [1, 2])
@pytest.mark.parametrize("exact_cell_size", [0, 10**9])
def test_stratified_bootstrap_keeps_every_stratum_size(monkeypatch, exact_cell_size, rows_per_unit):
    # 30 rows right and 70 wrong, all at confidence 0.9, the right ones in stratum "a": ECE |30 - 90| / 100.
    # A resample of 30 rows of "a" and 70 of "b" has that same ECE: the interval collapses onto it.
    # Drawn without strata, the mix varies and so does the ECE.
    monkeypatch.setattr(M, "_EXACT_CELL_SIZE", exact_cell_size)
    conf, correct = np.full(100, 0.9), np.arange(100) < 30
    strata = np.where(correct, "a", "b")
    units = np.arange(100) // rows_per_unit
    low, high = M.bootstrap_ece_interval(conf, correct, n_bootstrap=500, units=units, strata=strata)
    assert low == pytest.approx(0.6, abs=1e-12) and high == pytest.approx(0.6, abs=1e-12)
    low, high = M.bootstrap_ece_interval(conf, correct, n_bootstrap=500, units=units)
    assert high - low > 0.1


def test_bootstrap_grouping_errors():
    conf, correct = np.array([0.5, 0.6, 0.7]), np.array([True, False, True])
    with pytest.raises(ValueError, match=r"unit 'd1' has rows in strata 'x' and 'y'"):
        M.bootstrap_ece_interval(conf, correct, units=["d1", "d1", "d2"], strata=["x", "y", "y"])
    with pytest.raises(ValueError, match=r"units \(column 'item_id'\) must not be missing: 1 of 3 .*position 2"):
        M.bootstrap_ece_interval(conf, correct, units=pd.Series(["a", "b", None], name="item_id"))
    with pytest.raises(ValueError, match=r"strata must be 1-D and as long as confidence \(3\), got shape \(2,\)"):
        M.bootstrap_ece_interval(conf, correct, strata=["x", "y"])


def test_bootstrap_is_fast_on_a_million_tokens():
    conf, correct = _overconfident(10**6)
    start = time.perf_counter()
    low, high = M.bootstrap_ece_interval(conf, correct, n_bootstrap=1000)
    assert time.perf_counter() - start < 10.0
    assert low < M.expected_calibration_error(conf, correct) < high


def test_calibration_metrics_keys_and_values():
    result = M.calibration_metrics(CONF, CORRECT, n_bootstrap=200)
    assert list(result) == ["n", "accuracy", "mean_confidence", "ece", "mce", "ace", "brier", "brier_multiclass",
                            "letter_mass", "auroc", "ece_ci_low", "ece_ci_high"]
    assert result["n"] == 6 and result["accuracy"] == pytest.approx(0.5)
    assert result["mean_confidence"] == pytest.approx(2.95 / 6)
    assert result["ece"] == pytest.approx(1.85 / 6) and result["ace"] == pytest.approx(2.25 / 6)
    assert result["ece_ci_low"] <= result["ece_ci_high"] and np.isnan(result["brier_multiclass"])
    assert np.isnan(result["letter_mass"])
    assert np.isnan(M.calibration_metrics(CONF, CORRECT, n_bootstrap=0)["ece_ci_low"])


def test_letter_mass_is_the_mean_over_rows_that_have_one():
    result = M.calibration_metrics(CONF, CORRECT, n_bootstrap=0, letter_mass=[0.9, 0.5, np.nan, 0.4, 1.0, 0.2])
    assert result["letter_mass"] == pytest.approx(3.0 / 5)
    assert np.isnan(M.mean_letter_mass([np.nan, np.nan])) and M.mean_letter_mass([0.25]) == 0.25
    with pytest.raises(ValueError, match=r"letter_mass must be a probability within \[0, 1\]: 1 of 2 .*1\.5"):
        M.mean_letter_mass([0.5, 1.5])
    with pytest.raises(ValueError, match="letter_mass and confidence differ in length: 2 vs 6"):
        M.calibration_metrics(CONF, CORRECT, n_bootstrap=0, letter_mass=[0.5, 0.5])


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("conf, correct, message", [
    ([0.5, np.nan, 0.2], [True, False, True], r"1 of 3 values are not \(e\.g\. nan at position 1\)"),
    ([0.5, 1.5, 2.0], [True, False, True], r"2 of 3 values are not \(e\.g\. 1\.5 at position 1\)"),
    ([0.5, -0.1], [True, False], r"1 of 2 values .*-0\.1"),
    ([0.5, 0.2, 0.1], [True, False], r"differ in length: 3 vs 2"),
    ([], [], r"no items"),
    ([0.5, 0.2], [1, 0.5], r"correct must be boolean .*1 of 2 values .*0\.5 at position 1"),
    ([0.5, 0.2], pd.Series([True, None], dtype="boolean"), r"correct must be boolean \(or 0/1\) and not missing"),
    ([0.5, 0.2], ["yes", "no"], r"correct must be boolean"),
])
def test_invalid_input_is_a_clear_value_error(conf, correct, message):
    for function in (M.calibration_metrics, M.expected_calibration_error, M.reliability_bins, M.auroc):
        with pytest.raises(ValueError, match=message):
            function(conf, correct)


def test_invalid_bins():
    with pytest.raises(ValueError, match="n_bins must be a positive integer"):
        M.expected_calibration_error(CONF, CORRECT, n_bins=0)


# ---------------------------------------------------------------- score and summarize

def _confidence_table(path, rng, n_questions, n_tokens):
    """One table of two methods: "softmax" (multiple-choice style: subjects, option probabilities and gold)
    and "max_prob" (CLM style: documents of four tokens)."""
    probs = rng.dirichlet(np.ones(3), n_questions)
    gold = rng.integers(0, 3, n_questions)
    conf = rng.uniform(0.3, 1.0, n_tokens)
    frames = [
        pd.DataFrame({"item_id": [f"q{i}" for i in range(n_questions)], "method": "softmax",
                      "confidence": probs.max(axis=1), "correct": probs.argmax(axis=1) == gold,
                      "subject": rng.choice(["algebra", "law", "virology"], n_questions),
                      "option_probs": list(probs), "gold": gold, "letter_mass": rng.uniform(0.2, 1.0, n_questions)}),
        pd.DataFrame({"item_id": [f"d{i // 4}" for i in range(n_tokens)], "method": "max_prob",
                      "confidence": conf, "correct": rng.uniform(size=n_tokens) < conf,
                      "position": np.arange(n_tokens) % 4}),
    ]
    write_table(pd.concat(frames, ignore_index=True), path,
                {"stage": "extract_confidence", "kind": "mc", "inference": {"params": 1234}})


@pytest.fixture()
def scored(tmp_path):
    rng = np.random.default_rng(0)
    runs = [("mmlu", "pythia-160m", "step1000", {"family": "pythia", "tag": 1}),
            ("arc", "pythia-160m", "main", {"family": "pythia", "tag": 1}),
            ("arc", "olmo-1b", "epoch2", {"family": "olmo", "data": "dolma", "tag": "final"})]
    summaries, bins = [], []
    for task, model, revision, labels in runs:
        source = tmp_path / "confidence" / task / model / f"{revision}.parquet"
        _confidence_table(source, rng, n_questions=150, n_tokens=80)
        summaries.append(tmp_path / "metrics" / task / model / f"{revision}.parquet")
        bins.append(tmp_path / "metrics" / task / model / f"{revision}.bins.parquet")
        M.score(source, summaries[-1], bins[-1], task=task, model=model, revision=revision,
                n_bins=10, n_bootstrap=100, seed=0, labels=labels)
    return tmp_path, summaries, bins


def test_score_writes_one_row_per_method_with_labels_and_provenance(scored):
    _, summaries, bins = scored
    summary = read_table(summaries[0])
    assert list(summary.columns) == ["task", "model", "revision", "method", *M.METRIC_NAMES, "params", "step",
                                     "epoch", "family", "tag"]
    assert summary["method"].tolist() == ["max_prob", "softmax"]
    assert summary["n"].tolist() == [80, 150]
    assert (summary["task"] == "mmlu").all() and (summary["revision"] == "step1000").all()
    assert (summary["family"] == "pythia").all() and (summary["tag"] == 1).all()
    assert (summary["params"] == 1234).all() and (summary["step"] == 1000).all()  # from provenance, revision
    assert summary["epoch"].isna().all()

    table = read_table(bins[0])
    assert list(table.columns) == ["task", "model", "revision", "method", "bin", "bin_lower", "bin_upper",
                                   "count", "mean_confidence", "accuracy"]
    assert table.groupby("method")["count"].sum().to_dict() == {"max_prob": 80, "softmax": 150}
    assert table.groupby("method").size().tolist() == [10, 10]

    provenance = read_provenance(summaries[0])
    assert provenance["stage"] == "score" and provenance["model"] == "pythia-160m"
    assert provenance["n_bins"] == 10 and provenance["n_bootstrap"] == 100 and provenance["seed"] == 0
    assert provenance["input"]["stage"] == "extract_confidence"
    assert "numpy" in provenance["packages"]
    assert read_provenance(bins[0])["stage"] == "score"


def test_score_matches_calibration_metrics(scored, tmp_path):
    # Multiple choice: questions stratified by subject, multi-class Brier; CLM: a document's tokens drawn together.
    table = read_table(tmp_path / "confidence" / "mmlu" / "pythia-160m" / "step1000.parquet")
    summary = read_table(tmp_path / "metrics" / "mmlu" / "pythia-160m" / "step1000.parquet").set_index("method")
    softmax, max_prob = table[table["method"] == "softmax"], table[table["method"] == "max_prob"]
    expected = {
        "softmax": M.calibration_metrics(softmax["confidence"], softmax["correct"], n_bootstrap=100, seed=0,
                                         units=softmax["item_id"], strata=softmax["subject"],
                                         option_probs=softmax["option_probs"], gold=softmax["gold"],
                                         letter_mass=softmax["letter_mass"]),
        "max_prob": M.calibration_metrics(max_prob["confidence"], max_prob["correct"], n_bootstrap=100, seed=0,
                                          units=max_prob["item_id"]),
    }
    for method, metrics in expected.items():
        assert {name: summary.loc[method, name] for name in M.METRIC_NAMES} == pytest.approx(metrics, nan_ok=True)
    assert summary.loc["softmax", "brier_multiclass"] == pytest.approx(
        M.multiclass_brier_score(softmax["option_probs"], softmax["gold"]))
    assert np.isnan(summary.loc["max_prob", "brier_multiclass"])
    assert summary.loc["softmax", "letter_mass"] == pytest.approx(softmax["letter_mass"].mean())
    assert np.isnan(summary.loc["max_prob", "letter_mass"])


def test_summarize_concatenates_sorted_with_union_of_labels(scored):
    root, summaries, bins = scored
    out = root / "metrics"
    M.summarize(summaries, bins, out / "summary.parquet", out / "summary.csv", out / "reliability.parquet")

    summary = read_table(out / "summary.parquet")
    keys = summary[["task", "model", "revision", "method"]].values.tolist()
    assert keys == sorted(keys) and len(keys) == 6
    assert list(summary.columns) == ["task", "model", "revision", "method", *M.METRIC_NAMES,
                                     "params", "step", "epoch", "family", "tag", "data"]
    assert summary["step"].isna().sum() == 4  # revisions "main" and "epoch2" name no step
    assert summary["epoch"].tolist()[:2] == [2, 2] and summary["epoch"][2:].isna().all()  # arc/olmo-1b sorts first
    olmo = summary["model"] == "olmo-1b"
    assert summary.loc[~olmo, "data"].isna().all() and (summary.loc[olmo, "data"] == "dolma").all()
    # tag mixes a number and text across runs: it becomes text
    assert summary["tag"].tolist() == ["final", "final"] + ["1"] * 4
    softmax = summary["method"] == "softmax"  # methods without option probabilities have no multi-class Brier
    assert summary.loc[softmax, "brier_multiclass"].notna().all()
    assert summary.loc[~softmax, "brier_multiclass"].isna().all()
    assert summary.loc[softmax, "letter_mass"].between(0.2, 1.0).all()  # and so do they lack letter_mass
    assert summary.loc[~softmax, "letter_mass"].isna().all()

    csv = pd.read_csv(out / "summary.csv")
    pd.testing.assert_frame_equal(csv, summary, check_dtype=False)

    reliability = read_table(out / "reliability.parquet")
    assert len(reliability) == 6 * 10
    keys = reliability[["task", "model", "revision", "method", "bin"]].values.tolist()
    assert keys == sorted(keys)
    counts = reliability.groupby(["task", "model", "revision", "method"])["count"].sum()
    assert counts.tolist() == summary.set_index(["task", "model", "revision", "method"])["n"].tolist()
    assert read_provenance(out / "summary.parquet")["stage"] == "summarize"
    assert set(read_provenance(out / "reliability.parquet")["inputs"]) == {str(path) for path in bins}


def test_score_errors_name_the_method(tmp_path):
    source = tmp_path / "confidence.parquet"
    write_table(pd.DataFrame({"item_id": ["a", "b"], "method": ["softmax", "softmax"],
                              "confidence": [0.5, 1.2], "correct": [True, False]}), source)
    with pytest.raises(ValueError, match=r"method 'softmax': confidence must be finite and within \[0, 1\]"):
        M.score(source, tmp_path / "s.parquet", tmp_path / "b.parquet", task="t", model="m", revision="r")
    with pytest.raises(ValueError, match="labels may not reuse"):
        M.score(source, tmp_path / "s.parquet", tmp_path / "b.parquet", task="t", model="m", revision="r",
                labels={"method": "dpo"})
    write_table(pd.DataFrame({"item_id": ["a", "b"], "method": ["softmax", None],
                              "confidence": [0.5, 0.2], "correct": [True, False]}), source)
    with pytest.raises(ValueError, match="1 rows have no method"):
        M.score(source, tmp_path / "s.parquet", tmp_path / "b.parquet", task="t", model="m", revision="r")
    rows = {"item_id": ["a", "b"], "method": "softmax", "confidence": [0.5, 0.6], "correct": [True, False]}
    write_table(pd.DataFrame({**rows, "subject": ["law", None]}), source)
    with pytest.raises(ValueError, match=r"confidence\.parquet, method 'softmax': strata \(column 'subject'\) "
                                         r"must not be missing: 1 of 2 values are \(e\.g\. at position 1\)"):
        M.score(source, tmp_path / "s.parquet", tmp_path / "b.parquet", task="t", model="m", revision="r")
    write_table(pd.DataFrame({**rows, "option_probs": [[0.5, 0.5], [0.4, 0.6]], "gold": [0, 2]}), source)
    with pytest.raises(ValueError, match=r"method 'softmax': gold must be an option index within \[0, 2\) \(its item"):
        M.score(source, tmp_path / "s.parquet", tmp_path / "b.parquet", task="t", model="m", revision="r")
    write_table(pd.DataFrame({"method": ["softmax"], "confidence": [0.5]}), source)
    with pytest.raises(ValueError, match=r"missing columns \['item_id', 'correct'\]"):
        M.score(source, tmp_path / "s.parquet", tmp_path / "b.parquet", task="t", model="m", revision="r")
    assert not (tmp_path / "s.parquet").exists()


@pytest.mark.parametrize("revision,epoch", [("epoch1", 1), ("epoch12", 12), ("main", None), ("step3", None),
                                            ("epoch", None), ("epoch2b", None)])
def test_parse_epoch(revision, epoch):
    assert M.parse_epoch(revision) == epoch
