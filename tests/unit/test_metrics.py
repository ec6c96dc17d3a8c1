"""Tests of the calibration metrics and of the score / summarize stages."""
import bisect
import itertools
import math

import calibration
import numpy as np
import pandas as pd
import pytest
import relplot
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import brier_score_loss, log_loss
from torchmetrics.functional.classification import binary_auroc, binary_calibration_error

from workflow_scripts import bootstrap as B
from workflow_scripts import metric_table as M
from workflow_scripts import metrics as F
from workflow_scripts import scoring as S
from workflow_scripts.summary import summarize
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
    table = F.reliability_bins(CONF, CORRECT)
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
    assert F.expected_calibration_error(CONF, CORRECT) == pytest.approx(1.85 / 6)
    assert F.maximum_calibration_error(CONF, CORRECT) == pytest.approx(0.45)
    assert F.brier_score(CONF, CORRECT) == pytest.approx(1.5725 / 6)
    assert F.auroc(CONF, CORRECT) == pytest.approx(7 / 9)
    assert F.adaptive_calibration_error(CONF, CORRECT) == pytest.approx(2.25 / 6)
    assert F.adaptive_calibration_error(CONF, CORRECT, n_bins=3) == pytest.approx(2.25 / 6)
    assert F.adaptive_calibration_error(CONF, CORRECT, n_bins=2) == pytest.approx(1.05 / 6)


# The metrics added for issue 14, on the same six items:
# RMSCE, 10 bins: sqrt((1*0^2 + 2*0.275^2 + 1*0.4^2 + 2*0.45^2) / 6) = sqrt(0.71625 / 6)
# NLL: the items at 0.0 (wrong) and 1.0 (right) cost nothing;
#   (-log 0.8 - log 0.25 - log 0.6 - log 0.1) / 6
# Risk-coverage, most confident first: 1.0 R, 0.9 W, 0.6 R, 0.25 R, 0.2 W, 0.0 W
#   errors 0 1 1 1 2 3 -> risks 0, 1/2, 1/3, 1/4, 2/5, 1/2 -> AURC = (119/60) / 6 = 119/360
#   oracle (3 right first): errors 0 0 0 1 2 3 -> risks 0, 0, 0, 1/4, 2/5, 1/2 -> 69/360; E-AURC 50/360
# Accuracy at 50% coverage: ceil(3) = 3 rows (R W R) -> 2/3; at 80%: ceil(4.8) = 5 rows -> 3/5
def test_added_metrics_hand_worked():
    assert F.rms_calibration_error(CONF, CORRECT) == pytest.approx(math.sqrt(0.71625 / 6))
    nll = (-math.log(0.8) - math.log(0.25) - math.log(0.6) - math.log(0.1)) / 6
    assert F.negative_log_likelihood(CONF, CORRECT) == pytest.approx(nll, abs=1e-12)
    aurc, eaurc = F.area_under_risk_coverage(CONF, CORRECT)
    assert aurc == pytest.approx(119 / 360) and eaurc == pytest.approx(50 / 360)
    assert F.accuracy_at_coverage(CONF, CORRECT, 0.5) == pytest.approx(2 / 3)
    assert F.accuracy_at_coverage(CONF, CORRECT, 0.8) == pytest.approx(3 / 5)
    curve = F.risk_coverage_curve(CONF, CORRECT)
    assert curve["x"].tolist() == pytest.approx([i / 6 for i in range(1, 7)])
    assert curve["y"].tolist() == pytest.approx([0, 1 / 2, 1 / 3, 1 / 4, 2 / 5, 1 / 2])


def test_nll_clips_certain_mistakes():
    # A wrong answer at confidence 1.0 costs -log(eps), not infinity; one at 0.0 that is right the same.
    eps = np.finfo(np.float64).eps
    assert F.negative_log_likelihood([1.0, 0.0], [False, True]) == pytest.approx(-math.log(eps))


# Ties: confidences 0.9 0.9 | 0.5 0.5 0.5 with correct 1 0 | 1 1 0. Over the orders of a tie group of m rows
# with e wrong, its first j rows hold j e / m wrong ones in expectation:
#   after 1 row 0.5, 2 rows 1; after 3 rows 1 + 1/3, 4 rows 1 + 2/3, 5 rows 2
#   risks 1/2, 1/2, 4/9, 5/12, 2/5 -> AURC = (1/2 + 1/2 + 4/9 + 5/12 + 2/5) / 5
#   oracle (3 right first): risks 0, 0, 0, 1/4, 2/5
#   accuracy at 50% coverage: ceil(2.5) = 3 rows -> 1 - (4/3) / 3 = 5/9; at 80%: 4 rows -> 1 - 5/12 = 7/12
TIED_CONF, TIED_CORRECT = [0.9, 0.9, 0.5, 0.5, 0.5], [True, False, True, True, False]


def test_risk_coverage_ties_hand_worked():
    aurc, eaurc = F.area_under_risk_coverage(TIED_CONF, TIED_CORRECT)
    expected = (1 / 2 + 1 / 2 + 4 / 9 + 5 / 12 + 2 / 5) / 5
    assert aurc == pytest.approx(expected) and eaurc == pytest.approx(expected - (1 / 4 + 2 / 5) / 5)
    assert F.accuracy_at_coverage(TIED_CONF, TIED_CORRECT, 0.5) == pytest.approx(5 / 9)
    assert F.accuracy_at_coverage(TIED_CONF, TIED_CORRECT, 0.8) == pytest.approx(7 / 12)
    assert F.risk_coverage_curve(TIED_CONF, TIED_CORRECT)["y"].tolist() == pytest.approx(
        [1 / 2, 1 / 2, 4 / 9, 5 / 12, 2 / 5])


# Debiased ECE, 2 equal-mass bins of conf 0.2 0.3 | 0.7 0.8 with correct 0 1 | 1 1 (edge 0.5):
#   bin 0: accuracy 0.5, mean confidence 0.25, d = 0.25, s = sqrt(0.5 * 0.5 / 2)
#          2 * 0.25 - E|Normal(0.25, s^2)| (the mean of a folded normal)
#   bin 1: accuracy 1.0: s = 0, no correction: 2 * 0.25 - 0.25 = 0.25
def test_debiased_ece_hand_worked():
    s = math.sqrt(0.5 * 0.5 / 2)
    # E|Normal(d, s^2)| = s sqrt(2/pi) exp(-d^2 / 2s^2) + d (1 - 2 Phi(-d/s)), and 1 - 2 Phi(-x) = erf(x / sqrt 2)
    folded = s * math.sqrt(2 / math.pi) * math.exp(-0.25 ** 2 / (2 * s ** 2)) + 0.25 * math.erf(0.25 / (s * 2 ** 0.5))
    assert folded == pytest.approx(scipy.stats.foldnorm(0.25 / s, scale=s).mean())  # the formula, checked by scipy
    expected = 0.5 * (2 * 0.25 - folded) + 0.5 * 0.25
    assert F.debiased_calibration_error([0.2, 0.3, 0.7, 0.8], [False, True, True, True], n_bins=2) == \
        pytest.approx(expected, abs=1e-12)


def test_debiased_ece_leaves_bins_of_one_row_uncorrected():
    # One row per bin (n_bins >= N): every bin's accuracy is 0 or 1, so the debiased ECE is the plain ACE.
    rng = np.random.default_rng(5)
    conf = rng.uniform(size=30)
    correct = rng.uniform(size=30) < conf
    assert F.debiased_calibration_error(conf, correct, 30) == pytest.approx(
        F.adaptive_calibration_error(conf, correct, 30), abs=1e-12)
    # A calibrated bin of many rows is corrected downwards: all at 0.5, half right -> ACE 0, debiased < 0.
    assert F.debiased_calibration_error([0.5] * 100, [True, False] * 50, 1) < 0.0


# SCE over the three items of OPTION_PROBS (gold 0, 2, 0), 10 equal-width bins per option position:
#   k=0: p 0.7 (gold), 0.2, 1.0 (gold) in bins 7, 2, 9 -> (0.3 + 0.2 + 0) / 3
#   k=1: p 0.2, 0.5, 0.0, never gold -> (0.2 + 0.5 + 0) / 3
#   k=2: p 0.1, 0.3 (gold), 0.0 in bins 1, 3, 0 -> (0.1 + 0.7 + 0) / 3
#   SCE = mean = (0.5 + 0.7 + 0.8) / 9 = 2/9; with one bin: (|2 - 1.9| + |0 - 0.7| + |1 - 0.4|) / 9 = 1.4/9
# Items with fewer options count only for the positions they have: (0.8, 0.2) gold 0 and (0.1, 0.6, 0.3)
#   gold 1, one bin: k=0 |1 - 0.9| / 2, k=1 |1 - 0.8| / 2, k=2 |0 - 0.3| / 1 -> (0.05 + 0.1 + 0.3) / 3 = 0.15
def test_sce_hand_worked():
    assert F.static_calibration_error(OPTION_PROBS, GOLD) == pytest.approx(2 / 9)
    assert F.static_calibration_error(OPTION_PROBS, GOLD, n_bins=1) == pytest.approx(1.4 / 9)
    assert F.static_calibration_error([[0.8, 0.2], [0.1, 0.6, 0.3]], [0, 1], n_bins=1) == pytest.approx(0.15)
    result = M.calibration_metrics([0.7, 0.5, 1.0], [True, False, True], n_bootstrap=0, option_probs=OPTION_PROBS,
                                   gold=GOLD)
    assert result["sce"] == pytest.approx(2 / 9)
    with pytest.raises(ValueError, match=r"gold must be an option index within \[0, 2\)"):
        F.static_calibration_error([[0.5, 0.5]], [2])


def test_bin_edges():
    # Every value i/10 starts bin i; 1.0 belongs to the last bin. Same with 3 bins and the float 1/3.
    edges = [i / 10 for i in range(11)]
    table = F.reliability_bins(edges, [True] * 11)
    assert table["count"].tolist() == [1] * 9 + [2]
    assert F.reliability_bins([0.0, 1 / 3, 0.5, 2 / 3, 1.0], [True] * 5, n_bins=3)["count"].tolist() == [1, 2, 2]


def test_ace_ties_follow_the_calibration_library():
    # [0.1, 0.2, 0.2, 0.4] in 2 parts: [0.1, 0.2] [0.2, 0.4]; the edge (0.2 + 0.2)/2 = 0.2 takes both 0.2s
    # (bisect_left), so the bins are {0.1, 0.2, 0.2} (acc 1/3, conf 0.5/3) and {0.4} (acc 1, conf 0.4).
    ace = F.adaptive_calibration_error([0.1, 0.2, 0.2, 0.4], [False, True, False, True], n_bins=2)
    assert ace == pytest.approx((3 * abs(1 / 3 - 0.5 / 3) + 1 * abs(1 - 0.4)) / 4)
    # All equal: every edge collapses onto 0.3, one bin holds everything -> |acc - 0.3|.
    assert F.adaptive_calibration_error([0.3] * 4, [True, False, False, False]) == pytest.approx(0.05)


def test_auroc_ties_count_half_and_one_class_is_nan():
    # correct {0.5, 0.7} vs wrong {0.3, 0.5}: 0.5 beats 0.3, ties 0.5 (half), 0.7 beats both -> 3.5/4
    assert F.auroc([0.3, 0.5, 0.5, 0.7], [False, True, False, True]) == pytest.approx(0.875)
    assert F.auroc([0.5, 0.5], [True, False]) == pytest.approx(0.5)
    assert np.isnan(F.auroc([0.2, 0.9], [True, True]))


def test_correct_may_be_zero_one_numbers():
    assert F.brier_score(CONF, np.array(CORRECT, dtype=int)) == F.brier_score(CONF, CORRECT)
    assert F.expected_calibration_error(CONF, np.array(CORRECT, dtype=float)) == pytest.approx(1.85 / 6)


# Multi-class Brier, by hand:
#   p = (0.7, 0.2, 0.1), gold 0: 0.09 + 0.04 + 0.01 = 0.14
#   p = (0.2, 0.5, 0.3), gold 2: 0.04 + 0.25 + 0.49 = 0.78
#   p = (1, 0, 0),       gold 0: 0
# mean 0.92 / 3. The top-label Brier of the same items (confidence 0.7 right, 0.5 wrong, 1.0 right):
#   (0.09 + 0.25 + 0) / 3 = 0.34 / 3
OPTION_PROBS = [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [1.0, 0.0, 0.0]]
GOLD = [0, 2, 0]


def test_multiclass_brier_hand_worked():
    assert F.multiclass_brier_score(OPTION_PROBS, GOLD) == pytest.approx(0.92 / 3)
    assert F.multiclass_brier_score([np.array(p) for p in OPTION_PROBS], np.array(GOLD, dtype=float)) == \
        pytest.approx(0.92 / 3)
    assert F.brier_score([0.7, 0.5, 1.0], [True, False, True]) == pytest.approx(0.34 / 3)
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
    assert F.multiclass_brier_score(list(probs), gold) == pytest.approx(expected, abs=1e-12)


def test_multiclass_brier_items_of_different_option_counts():
    # 2, 7 and 3 options: (0.2^2 + 0.2^2) + (6 * (1/7)^2 + (6/7)^2) + (0.5^2 + 0.5^2 + 0) = 0.08 + 6/7 + 0.5
    probs = [[0.8, 0.2], np.full(7, 1 / 7), [0.5, 0.0, 0.5]]
    assert F.multiclass_brier_score(probs, [0, 6, 2]) == pytest.approx((0.08 + 6 / 7 + 0.5) / 3)
    # the same as padding every item with options of probability 0 that are never gold
    padded = [np.pad(p, (0, 7 - len(p))) for p in probs]
    assert F.multiclass_brier_score(probs, [0, 6, 2]) == pytest.approx(F.multiclass_brier_score(padded, [0, 6, 2]))


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
        F.multiclass_brier_score(probs, gold)


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
    assert F.expected_calibration_error(conf, correct, n_bins) == pytest.approx(ece, abs=1e-12)
    assert F.maximum_calibration_error(conf, correct, n_bins) == pytest.approx(mce, abs=1e-12)


@pytest.mark.parametrize("decimals", [None, 2, 1])
def test_auroc_matches_torchmetrics(decimals):
    rng = np.random.default_rng(3)
    conf = rng.uniform(size=2000)
    correct = rng.uniform(size=2000) < conf
    if decimals is not None:  # many ties
        conf = np.round(conf, decimals)
    expected = binary_auroc(torch.tensor(conf), torch.tensor(correct.astype(int))).item()
    assert F.auroc(conf, correct) == pytest.approx(expected, abs=1e-6)  # torchmetrics returns float32


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
    assert F.adaptive_calibration_error(conf, correct, n_bins) == pytest.approx(
        naive_ace(conf, correct, n_bins), abs=1e-12)


@pytest.mark.parametrize("n_bins", [1, 5, 10, 15])
@pytest.mark.parametrize("seed", [0, 1])
def test_rmsce_matches_torchmetrics(seed, n_bins):
    conf, correct = _off_edge_sample(seed, n_bins)
    expected = binary_calibration_error(torch.tensor(conf, dtype=torch.float64), torch.tensor(correct.astype(int)),
                                        n_bins=n_bins, norm="l2").item()
    assert F.rms_calibration_error(conf, correct, n_bins) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("decimals", [None, 1])
def test_nll_matches_sklearn(decimals):
    rng = np.random.default_rng(8)
    conf = rng.uniform(size=1000)
    conf[:10] = [0.0, 1.0] * 5  # clipped to [eps, 1 - eps] by both
    if decimals is not None:
        conf = np.round(conf, decimals)
    correct = rng.uniform(size=1000) < conf
    assert F.negative_log_likelihood(conf, correct) == pytest.approx(
        log_loss(correct, conf, labels=[False, True]), rel=1e-12)


def _calibrated_sample(size, seed):
    """Confidences with correctness drawn at exactly their rate: the binned ECE is all bias."""
    rng = np.random.default_rng(seed)
    conf = rng.beta(4, 2, size)
    return conf, (rng.uniform(size=size) < conf).astype(int)


# Kumar et al.'s debiased ECE (calibration.get_ece_em(debias=True)) subtracts from the plug-in the mean of
# R = 1000 resampled CEs, each sum_b w_b |A_b - c_b| with independent A_b ~ Normal(a_b, a_b (1 - a_b) / n_b).
# |.| is 1-Lipschitz, so the variance of one resampled CE is at most sum_b w_b^2 a_b (1 - a_b) / n_b
# <= sum_b (n_b / N)^2 / (4 n_b) = 1 / (4 N): its Monte Carlo error has standard deviation at most
# 1 / (2 sqrt(N R)), and ours (the limit R -> infinity) must lie within 5 of those (seeded, so deterministic).
@pytest.mark.parametrize("size, n_bins", [(2000, 10), (2000, 15), (300, 5)])
def test_debiased_ece_matches_kumar_monte_carlo(size, n_bins):
    conf, correct = _calibrated_sample(size, seed=size + n_bins)
    ours = F.debiased_calibration_error(conf, correct, n_bins)
    np.random.seed(0)
    theirs = calibration.get_ece_em(conf, correct, debias=True, num_bins=n_bins)
    tolerance = 5 / (2 * math.sqrt(size * 1000))
    assert ours == pytest.approx(theirs, abs=tolerance)
    # The plain ACE lies outside the tolerance: the test tells the debiased ECE from it.
    assert F.adaptive_calibration_error(conf, correct, n_bins) - theirs > tolerance


def test_debiased_ece_matches_kumar_with_many_resamples():
    # Their estimator on their own equal-mass bins, with R = 10^5 resamples: tolerance 5 / (2 sqrt(N R)).
    conf, correct = _calibrated_sample(2000, seed=11)
    binned = calibration.bin(list(zip(conf, correct)), calibration.get_equal_bins(conf, num_bins=10))
    np.random.seed(1)
    theirs = calibration.utils.normal_debiased_ce(binned, power=1, resamples=10**5)
    assert F.debiased_calibration_error(conf, correct, 10) == pytest.approx(theirs, abs=5 / (2 * math.sqrt(2000e5)))


def _reflected_kernel(grid, conf, bandwidth):
    """Gaussian kernel weights of every confidence at every grid point, reflected at 0 and 1."""
    t = grid[:, None]
    return sum(scipy.stats.norm.pdf((t - image) / bandwidth) for image in (conf, -conf, 2.0 - conf)) / bandwidth


@pytest.mark.parametrize("size", [50, 500, 5000])
def test_smooth_ece_is_relplots_and_its_curve_the_kernel_regression(size):
    rng = np.random.default_rng(size)
    conf = rng.beta(5, 2, size)
    correct = rng.uniform(size=size) < conf ** 1.3
    value, bandwidth = F.smooth_calibration_error(conf, correct)
    assert (value, bandwidth) == relplot.smECE(conf, correct.astype(float), return_width=True)
    assert bandwidth == pytest.approx(value, abs=2e-3)  # relplot's fixed point: bandwidth = smECE at it

    curve = F.smooth_reliability_curve(conf, correct, bandwidth)
    assert list(curve.columns) == ["x", "y", "density"] and curve["x"].tolist() == pytest.approx(
        np.linspace(0, 1, 101).tolist())
    # Written out exactly (relplot rounds the data to a grid): the Nadaraya-Watson accuracy and the density.
    weights = _reflected_kernel(curve["x"].to_numpy(), conf, bandwidth)
    assert curve["y"].to_numpy() == pytest.approx(weights @ correct / weights.sum(axis=1), abs=1e-3)
    assert curve["density"].to_numpy() == pytest.approx(weights.sum(axis=1) / size, rel=1e-3)
    # smECE at its bandwidth is the mean absolute smoothed residual under the smoothed density.
    fine = np.linspace(0, 1, 2001)
    fine_weights = _reflected_kernel(fine, conf, bandwidth)
    residual = fine_weights @ (conf - correct) / fine_weights.sum(axis=1)
    density = fine_weights.sum(axis=1)
    assert value == pytest.approx(np.sum(np.abs(residual) * density) / density.sum(), abs=1e-3)


def test_smooth_reliability_curve_is_relplots_diagram(monkeypatch):
    # relplot's own reliability diagram (no bootstrap band), on a mesh of our 101 points, gives the same curve.
    monkeypatch.setattr(relplot.config, "plot_mesh_pts", 101)
    conf, correct = _calibrated_sample(800, seed=3)
    _, bandwidth = F.smooth_calibration_error(conf, correct)
    diagram = relplot.prepare_rel_diagram(conf, correct, plot_confidence_band=False, report_CE=False)
    assert diagram["sigma"] == bandwidth
    curve = F.smooth_reliability_curve(conf, correct, bandwidth)
    np.testing.assert_allclose(curve["x"], diagram["mesh"], atol=1e-15)
    np.testing.assert_allclose(curve["y"], diagram["mu"], rtol=1e-12)
    np.testing.assert_allclose(curve["density"], diagram["density"], rtol=1e-12)


@pytest.mark.parametrize("n_options", [2, 4, 10])
@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_sce_matches_kumar_marginal_ce(n_options, n_bins):
    # Their equal-width bins are (lower, upper], ours [lower, upper): continuous probabilities never sit on an edge.
    rng = np.random.default_rng(n_options * 100 + n_bins)
    probs = rng.dirichlet(np.full(n_options, 0.7), 1000)
    gold = np.array([rng.choice(n_options, p=p) for p in probs])
    expected = calibration.lower_bound_scaling_ce(probs, gold, p=1, debias=False, num_bins=n_bins,
                                                  binning_scheme=calibration.get_equal_prob_bins, mode="marginal")
    assert F.static_calibration_error(list(probs), gold, n_bins) == pytest.approx(expected, abs=1e-12)


def naive_sce(option_probs, gold, n_bins):
    """SCE written out with loops: per option position, the ECE over the items that have that option."""
    per_class = []
    for k in range(max(len(p) for p in option_probs)):
        bins = {}
        for p, g in zip(option_probs, gold):
            if k < len(p):
                b = min(int(bisect.bisect_right([i / n_bins for i in range(n_bins + 1)], p[k])) - 1, n_bins - 1)
                bins.setdefault(b, []).append((p[k], float(g == k)))
        rows = sum(len(items) for items in bins.values())
        gaps = [abs(sum(y for _, y in items) - sum(q for q, _ in items)) for items in bins.values()]
        per_class.append(sum(gaps) / rows)
    return sum(per_class) / len(per_class)


@pytest.mark.parametrize("decimals", [None, 1])
def test_sce_of_items_with_different_option_counts_matches_naive_loop(decimals):
    rng = np.random.default_rng(9)
    probs = [rng.dirichlet(np.ones(k)) for k in rng.integers(2, 6, 300)]
    if decimals is not None:  # values on the bin edges
        probs = [np.round(p, decimals) / np.round(p, decimals).sum() for p in probs]
    gold = [rng.choice(len(p), p=p) for p in probs]
    assert F.static_calibration_error(probs, gold, 10) == pytest.approx(naive_sce(probs, gold, 10), abs=1e-12)


def _risk_over_all_orders(conf, correct):
    """The risk of the i most confident rows, averaged over every order of the rows (each tie order equally
    often): the orders sorted stably by descending confidence."""
    risks = []
    for order in itertools.permutations(range(len(conf))):
        ranked = sorted(order, key=lambda i: -conf[i])  # stable: ties keep the permutation's order
        wrong = np.cumsum([not correct[i] for i in ranked])
        risks.append(wrong / np.arange(1, len(conf) + 1))
    return np.mean(risks, axis=0)


@pytest.mark.parametrize("seed", range(6))
def test_risk_coverage_ties_match_the_average_over_all_orders(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 8))
    conf = rng.choice([0.3, 0.6, 0.9], size).tolist()
    correct = (rng.uniform(size=size) < 0.6).tolist()
    risk = _risk_over_all_orders(conf, correct)
    aurc, eaurc = F.area_under_risk_coverage(conf, correct)
    assert aurc == pytest.approx(risk.mean(), abs=1e-12)
    oracle = np.maximum(np.arange(1, size + 1) - sum(correct), 0) / np.arange(1, size + 1)
    assert eaurc == pytest.approx(risk.mean() - oracle.mean(), abs=1e-12)
    assert F.risk_coverage_curve(conf, correct)["y"].to_numpy() == pytest.approx(risk, abs=1e-12)
    for coverage in (0.5, 0.8):
        rows = math.ceil(round(coverage * size, 9))
        assert F.accuracy_at_coverage(conf, correct, coverage) == pytest.approx(1 - risk[rows - 1], abs=1e-12)


def test_aurc_matches_kumar_selective_stats():
    # calibration.get_selective_stats: the mean accuracy over coverages i/N (1 - AURC without ties) and the
    # accuracy of the int(0.1 N) + 1 most confident rows (= ceil(0.1 N) when 0.1 N is no integer).
    rng = np.random.default_rng(12)
    conf = rng.uniform(size=2003)
    correct = rng.uniform(size=2003) < conf
    area, accuracy_10 = calibration.get_selective_stats(conf, correct)
    assert F.area_under_risk_coverage(conf, correct)[0] == pytest.approx(1 - area, abs=1e-12)
    assert F.accuracy_at_coverage(conf, correct, 0.1) == pytest.approx(accuracy_10, abs=1e-12)


def test_risk_coverage_curve_has_at_most_101_points():
    conf, correct = _calibrated_sample(1234, seed=2)
    curve = F.risk_coverage_curve(conf, correct)
    rows = [1] + [math.ceil(j * 1234 / 100) for j in range(1, 101)]
    assert curve["x"].tolist() == pytest.approx([r / 1234 for r in rows])
    assert curve["y"].iloc[-1] == pytest.approx(1 - correct.mean())
    assert len(F.risk_coverage_curve(conf[:100], correct[:100])) == 100


# ---------------------------------------------------------------- properties

items = st.lists(st.tuples(st.floats(0.0, 1.0), st.booleans()), min_size=1, max_size=60)
bin_counts = st.integers(1, 20)


@settings(deadline=None)
@given(items, bin_counts)
def test_ece_bounded_by_mce_and_unit_interval(data, n_bins):
    conf, correct = zip(*data)
    ece = F.expected_calibration_error(conf, correct, n_bins)
    mce = F.maximum_calibration_error(conf, correct, n_bins)
    assert 0.0 <= ece <= 1.0 and 0.0 <= mce <= 1.0
    assert ece <= mce + 1e-12
    assert 0.0 <= F.adaptive_calibration_error(conf, correct, n_bins) <= 1.0


@settings(deadline=None)
@given(items, bin_counts)
def test_reliability_counts_sum_to_n(data, n_bins):
    conf, correct = zip(*data)
    table = F.reliability_bins(conf, correct, n_bins)
    assert len(table) == n_bins and table["count"].sum() == len(conf)
    full = table[table["count"] > 0]
    assert ((full["mean_confidence"] >= full["bin_lower"] - 1e-12)
            & (full["mean_confidence"] <= full["bin_upper"] + 1e-12)).all()


@settings(deadline=None)
@given(items, bin_counts, st.randoms(use_true_random=False))
def test_ece_invariant_to_item_order(data, n_bins, random):
    shuffled = random.sample(data, len(data))
    assert F.expected_calibration_error(*zip(*shuffled), n_bins) == pytest.approx(
        F.expected_calibration_error(*zip(*data), n_bins), abs=1e-12)
    assert F.adaptive_calibration_error(*zip(*shuffled), n_bins) == pytest.approx(
        F.adaptive_calibration_error(*zip(*data), n_bins), abs=1e-12)


# A group of m items at confidence k/m with exactly k correct is calibrated; so is any union of such
# groups in any bin (the bin's accuracy and mean confidence are both sum(k) / sum(m)).
groups = st.lists(st.integers(1, 12).flatmap(lambda m: st.tuples(st.just(m), st.integers(0, m))), min_size=1,
                  max_size=15)


@settings(deadline=None)
@given(groups, bin_counts)
def test_calibrated_construction_has_zero_ece(group_list, n_bins):
    conf = [k / m for m, k in group_list for _ in range(m)]
    correct = [i < k for m, k in group_list for i in range(m)]
    assert F.expected_calibration_error(conf, correct, n_bins) == pytest.approx(0.0, abs=1e-12)
    assert F.maximum_calibration_error(conf, correct, n_bins) == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- bootstrap

def _overconfident(size, seed=0):
    rng = np.random.default_rng(seed)
    conf = rng.uniform(0.5, 1.0, size)
    return conf, rng.uniform(size=size) < conf - 0.1


def test_bootstrap_contains_point_and_is_deterministic():
    conf, correct = _overconfident(2000)
    ece = F.expected_calibration_error(conf, correct)
    low, high = B.bootstrap_ece_interval(conf, correct, seed=7)
    assert low < ece < high
    assert B.bootstrap_ece_interval(conf, correct, seed=7) == (low, high)
    assert B.bootstrap_ece_interval(conf, correct, seed=8) != (low, high)


def test_bootstrap_narrows_with_more_data():
    widths = []
    for size in (200, 2000, 20000):
        low, high = B.bootstrap_ece_interval(*_overconfident(size))
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]


def naive_bootstrap_gaps(conf, correct, n_bins, n_bootstrap, seed, units=None, strata=None):
    """Bin gaps (number correct - confidence sum, per row drawn) of resamples drawn by plain indexing: each
    stratum's units with replacement, then their rows. Their absolute values add up to the resample's ECE."""
    rng = np.random.default_rng(seed)
    units = np.arange(len(conf)) if units is None else np.asarray(units)
    strata = np.zeros(len(conf)) if strata is None else np.asarray(strata)
    rows_of = {unit: np.flatnonzero(units == unit) for unit in np.unique(units)}
    by_stratum = [[unit for unit, rows in rows_of.items() if strata[rows[0]] == s] for s in np.unique(strata)]
    gaps = []
    for _ in range(n_bootstrap):
        rows = np.concatenate([rows_of[members[i]] for members in by_stratum
                               for i in rng.integers(0, len(members), len(members))])
        index = F.width_bin_index(conf[rows], n_bins)
        gaps.append(np.bincount(index, weights=correct[rows] - conf[rows], minlength=n_bins) / len(rows))
        assert np.abs(gaps[-1]).sum() == pytest.approx(F.expected_calibration_error(conf[rows], correct[rows], n_bins))
    return np.array(gaps)


def _assert_same_resamples(resampled, expected, gaps, tolerance=0.1):
    """The resampled ECEs and deviations sum |gap - gaps| of two bootstraps have the same 2.5% and 97.5%
    quantiles, up to `tolerance` times the width between them."""
    for statistic in (lambda g: np.abs(g).sum(axis=1), lambda g: np.abs(g - gaps).sum(axis=1)):
        low, high = np.quantile(statistic(resampled), [0.025, 0.975])
        expected_low, expected_high = np.quantile(statistic(expected), [0.025, 0.975])
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
    expected = naive_bootstrap_gaps(conf, correct, 10, 1500, seed=2, strata=strata)
    for exact_cell_size in (0, 10**9):  # every cell by its normal limit / row by row
        monkeypatch.setattr(B, "EXACT_CELL_SIZE", exact_cell_size)
        gaps, resampled = B.bootstrap_bin_gaps(conf, correct, n_bootstrap=3000, seed=3, strata=strata)
        _assert_same_resamples(resampled, expected, gaps)


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
    monkeypatch.setattr(B, "UNIT_CHUNK_ELEMENTS", chunk_elements)
    conf, correct, docs = _documents(120, seed=4)
    strata = np.array(["a" if doc[-1] in "123" else "b" for doc in docs]) if stratified else None
    expected = naive_bootstrap_gaps(conf, correct, 10, 2000, seed=5, units=docs, strata=strata)
    gaps, resampled = B.bootstrap_bin_gaps(conf, correct, n_bootstrap=3000, seed=6, units=docs, strata=strata)
    _assert_same_resamples(resampled, expected, gaps)
    low, high = B.bootstrap_ece_interval(conf, correct, n_bootstrap=3000, seed=6, units=docs, strata=strata)
    assert B.bootstrap_ece_interval(conf, correct, n_bootstrap=3000, seed=6, units=docs, strata=strata) == (low, high)


def test_bootstrap_over_documents_does_not_shrink_when_tokens_repeat():
    conf, correct, docs = _documents(200, seed=7)
    repeated = np.repeat(np.arange(len(conf)), 5)  # every token five times, within its document
    conf5, correct5, docs5 = conf[repeated], correct[repeated], docs[repeated]
    assert F.expected_calibration_error(conf5, correct5) == pytest.approx(F.expected_calibration_error(conf, correct))

    def width(*args, **kwargs):
        low, high = B.bootstrap_ece_interval(*args, n_bootstrap=2000, seed=0, **kwargs)
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
    monkeypatch.setattr(B, "EXACT_CELL_SIZE", exact_cell_size)
    conf, correct = np.full(100, 0.9), np.arange(100) < 30
    strata = np.where(correct, "a", "b")
    units = np.arange(100) // rows_per_unit
    low, high = B.bootstrap_ece_interval(conf, correct, n_bootstrap=500, units=units, strata=strata)
    assert low == pytest.approx(0.6, abs=1e-12) and high == pytest.approx(0.6, abs=1e-12)
    low, high = B.bootstrap_ece_interval(conf, correct, n_bootstrap=500, units=units)
    assert high - low > 0.1


def test_bootstrap_grouping_errors():
    conf, correct = np.array([0.5, 0.6, 0.7]), np.array([True, False, True])
    with pytest.raises(ValueError, match=r"unit 'd1' has rows in strata 'x' and 'y'"):
        B.bootstrap_ece_interval(conf, correct, units=["d1", "d1", "d2"], strata=["x", "y", "y"])
    with pytest.raises(ValueError, match=r"units \(column 'item_id'\) must not be missing: 1 of 3 .*position 2"):
        B.bootstrap_ece_interval(conf, correct, units=pd.Series(["a", "b", None], name="item_id"))
    with pytest.raises(ValueError, match=r"strata must be 1-D and as long as confidence \(3\), got shape \(2,\)"):
        B.bootstrap_ece_interval(conf, correct, strata=["x", "y"])


def test_bootstrap_on_a_million_tokens_holds_the_ece_and_narrows_as_one_over_root_n():
    """Rows whose cells are drawn by their normal limit (benchmarks/bootstrap_speed.py times this):
    the interval holds the ECE, and ten times the rows make it about sqrt(10) times narrower."""
    conf, correct = _overconfident(10**6)
    low, high = B.bootstrap_ece_interval(conf, correct, n_bootstrap=1000)
    assert low < F.expected_calibration_error(conf, correct) < high
    tenth_low, tenth_high = B.bootstrap_ece_interval(conf[:10**5], correct[:10**5], n_bootstrap=1000)
    assert (tenth_high - tenth_low) / (high - low) == pytest.approx(10**0.5, rel=0.25)


def test_calibration_metrics_keys_and_values():
    result = M.calibration_metrics(CONF, CORRECT, n_bootstrap=200)
    assert list(result) == ["n", "accuracy", "mean_confidence", "ece", "mce", "ace", "brier", "brier_multiclass",
                            "letter_mass", "auroc", "rmsce", "ece_debiased", "smece", "nll", "sce", "aurc", "eaurc",
                            "acc_at_coverage_50", "acc_at_coverage_80", "ece_ci_low", "ece_ci_high"]
    assert list(S.METRIC_COLUMNS) == ["n", "unparsed", *list(result)[1:], "temperature"]
    assert result["n"] == 6 and result["accuracy"] == pytest.approx(0.5)
    assert result["mean_confidence"] == pytest.approx(2.95 / 6)
    assert result["ece"] == pytest.approx(1.85 / 6) and result["ace"] == pytest.approx(2.25 / 6)
    assert result["ece_ci_low"] <= result["ece_ci_high"] and np.isnan(result["brier_multiclass"])
    assert np.isnan(result["letter_mass"])
    assert np.isnan(M.calibration_metrics(CONF, CORRECT, n_bootstrap=0)["ece_ci_low"])


def test_letter_mass_is_the_mean_over_rows_that_have_one():
    result = M.calibration_metrics(CONF, CORRECT, n_bootstrap=0, letter_mass=[0.9, 0.5, np.nan, 0.4, 1.0, 0.2])
    assert result["letter_mass"] == pytest.approx(3.0 / 5)
    assert np.isnan(F.mean_letter_mass([np.nan, np.nan])) and F.mean_letter_mass([0.25]) == 0.25
    with pytest.raises(ValueError, match=r"letter_mass must be a probability within \[0, 1\]: 1 of 2 .*1\.5"):
        F.mean_letter_mass([0.5, 1.5])
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
    for function in (M.calibration_metrics, F.expected_calibration_error, F.reliability_bins, F.auroc):
        with pytest.raises(ValueError, match=message):
            function(conf, correct)


def test_invalid_bins():
    with pytest.raises(ValueError, match="n_bins must be a positive integer"):
        F.expected_calibration_error(CONF, CORRECT, n_bins=0)


# ---------------------------------------------------------------- score and summarize

def _temperature_scaled(probs, temperature):
    logits = np.log(probs) / temperature
    scaled = np.exp(logits - logits.max(axis=1, keepdims=True))
    return scaled / scaled.sum(axis=1, keepdims=True)


def _recalibrated_table(path, rng, n_questions, n_tokens, subjects=("algebra", "law", "virology")):
    """A recalibrated table of two methods, rows in recalibrate's order: "softmax" (multiple-choice style:
    subjects, option probabilities and gold) recalibrated none, temperature (T 1.5 on fold 0, 2.5 on fold 1;
    option probabilities scaled) and platt (no option probabilities); "max_prob" (CLM style: documents of
    four tokens) none, temperature (T 0.8 and 1.2) and isotonic."""
    probs = rng.dirichlet(np.ones(3), n_questions)
    gold = rng.integers(0, 3, n_questions)
    fold = np.arange(n_questions) % 2
    temperature = np.where(fold == 0, 1.5, 2.5)
    scaled = _temperature_scaled(probs, temperature[:, None])
    questions = pd.DataFrame({"item_id": [f"q{i}" for i in range(n_questions)], "method": "softmax",
                              "correct": probs.argmax(axis=1) == gold, "subject": rng.choice(subjects, n_questions),
                              "gold": gold, "pred": probs.argmax(axis=1),
                              "letter_mass": rng.uniform(0.2, 1.0, n_questions)})
    doc = np.arange(n_tokens) // 4
    conf = rng.uniform(0.3, 1.0, n_tokens)
    tokens = pd.DataFrame({"item_id": [f"d{d}" for d in doc], "method": "max_prob",
                           "correct": rng.uniform(size=n_tokens) < conf, "position": np.arange(n_tokens) % 4})
    token_t = np.where(doc % 2 == 0, 0.8, 1.2)
    logit = np.log(conf / (1 - conf))
    frames = [
        questions.assign(recalibration="none", confidence=probs.max(axis=1), option_probs=list(probs),
                         temperature=np.nan, fold=None),
        questions.assign(recalibration="temperature", confidence=scaled.max(axis=1), option_probs=list(scaled),
                         temperature=temperature, fold=fold),
        questions.assign(recalibration="platt", confidence=rng.uniform(0.3, 0.9, n_questions), option_probs=None,
                         temperature=np.nan, fold=fold),
        tokens.assign(recalibration="none", confidence=conf, temperature=np.nan, fold=None),
        tokens.assign(recalibration="temperature", confidence=1 / (1 + np.exp(-logit / token_t)),
                      temperature=token_t, fold=doc % 2),
        tokens.assign(recalibration="isotonic", confidence=np.round(conf, 1), temperature=np.nan, fold=doc % 2),
    ]
    table = pd.concat(frames, ignore_index=True).astype({"fold": "Int64"})
    write_table(table, path, {"stage": "recalibrate", "methods": ["temperature", "platt", "isotonic"],
                              "input": {"stage": "extract_confidence", "inference": {"params": 1234}}})
    return table


OUTPUTS = ("summary", "bins", "sweep", "subjects", "curves")


def _score(source, out, **kwargs):
    """Score `source` into out/<output>.parquet for every output; returns those paths."""
    paths = {name: out / f"{name}.parquet" for name in OUTPUTS}
    S.score(source, *paths.values(), **{"task": "t", "model": "m", "revision": "r", "step": None, "epoch": None,
                                        "n_bins": 10, "n_bootstrap": 1000, "seed": 0, **kwargs})
    return paths


@pytest.fixture()
def scored(tmp_path):
    rng = np.random.default_rng(0)
    runs = [("mmlu", "pythia-160m", "step1000", {"step": 1000}, {"family": "pythia", "tag": 1}),
            ("arc", "pythia-160m", "main", {}, {"family": "pythia", "tag": 1}),
            ("arc", "olmo-1b", "epoch2", {"epoch": 2}, {"family": "olmo", "data": "dolma", "tag": "final"})]
    outputs = {name: [] for name in OUTPUTS}
    for task, model, revision, numbers, labels in runs:
        source = tmp_path / "recalibrated" / task / model / f"{revision}.parquet"
        _recalibrated_table(source, rng, n_questions=150, n_tokens=80)
        paths = _score(source, tmp_path / "metrics" / task / model / revision, task=task, model=model,
                       revision=revision, **numbers, n_bins=10, n_bootstrap=100, seed=0, labels=labels)
        for name, path in paths.items():
            outputs[name].append(path)
    return tmp_path, outputs


GROUPS = [("max_prob", "none"), ("max_prob", "temperature"), ("max_prob", "isotonic"),
          ("softmax", "none"), ("softmax", "temperature"), ("softmax", "platt")]


def test_score_writes_rows_per_method_recalibration_and_aggregation(scored):
    _, outputs = scored
    summary = read_table(outputs["summary"][0])
    assert list(summary.columns) == [*S.KEYS, "aggregation", *S.METRIC_COLUMNS, "params", "step", "epoch", "family",
                                     "tag"]
    assert list(zip(summary["method"], summary["recalibration"], summary["aggregation"])) == [
        ("max_prob", "none", "micro"), ("max_prob", "temperature", "micro"), ("max_prob", "isotonic", "micro"),
        ("softmax", "none", "micro"), ("softmax", "none", "macro"), ("softmax", "temperature", "micro"),
        ("softmax", "temperature", "macro"), ("softmax", "platt", "micro"), ("softmax", "platt", "macro")]
    assert summary["n"].tolist() == [80] * 3 + [150] * 6  # macro rows count every item too
    assert (summary["task"] == "mmlu").all() and (summary["revision"] == "step1000").all()
    assert (summary["family"] == "pythia").all() and (summary["tag"] == 1).all()
    assert (summary["params"] == 1234).all() and (summary["step"] == 1000).all()  # from provenance, argument
    assert summary["epoch"].isna().all()
    # the mean of the per-fold temperatures on temperature rows (every subject has rows of both folds)
    scaled = summary["recalibration"] == "temperature"
    assert summary.loc[scaled, "temperature"].tolist() == pytest.approx([1.0, 2.0, 2.0])
    assert summary.loc[~scaled, "temperature"].isna().all()
    macro = summary["aggregation"] == "macro"
    assert summary.loc[macro, ["ece_ci_low", "ece_ci_high"]].isna().all().all()
    assert summary.loc[~macro, ["ece_ci_low", "ece_ci_high"]].notna().all().all()
    # multi-class metrics where option probabilities are: softmax none and temperature
    with_options = (summary["method"] == "softmax") & (summary["recalibration"] != "platt")
    assert summary.loc[with_options, ["sce", "brier_multiclass"]].notna().all().all()
    assert summary.loc[~with_options, ["sce", "brier_multiclass"]].isna().all().all()
    assert summary.drop(columns=["sce", "brier_multiclass", "letter_mass", "temperature", "ece_ci_low",
                                 "ece_ci_high", "epoch"]).notna().all().all()

    bins = read_table(outputs["bins"][0])
    assert list(bins.columns) == [*S.KEYS, *S.BIN_COLUMNS]
    assert list(bins.groupby(["method", "recalibration"], sort=False)["count"].sum().items()) == [
        (group, 80 if group[0] == "max_prob" else 150) for group in GROUPS]
    sweep = read_table(outputs["sweep"][0])
    assert list(sweep.columns) == [*S.KEYS, "n_bins", "ece"]
    assert list(sweep.groupby(["method", "recalibration"], sort=False).groups) == GROUPS
    assert sweep["n_bins"].tolist() == [5, 10, 15, 20] * 6
    micro = summary[~macro].reset_index(drop=True)
    assert sweep.loc[sweep["n_bins"] == 10, "ece"].tolist() == pytest.approx(micro["ece"].tolist())

    subjects = read_table(outputs["subjects"][0])
    assert list(subjects.columns) == [*S.KEYS, "subject", *S.METRIC_COLUMNS]
    assert list(zip(subjects["recalibration"], subjects["subject"])) == [
        (recalibration, subject) for recalibration in ("none", "temperature", "platt")
        for subject in ("algebra", "law", "virology")]
    assert (subjects["method"] == "softmax").all() and subjects.groupby("recalibration")["n"].sum().eq(150).all()
    # a macro row is the mean of its subjects' rows
    means = subjects.groupby("recalibration", sort=False)[list(S.METRIC_COLUMNS)].mean()
    for metric in ("accuracy", "ece", "smece", "sce", "aurc", "acc_at_coverage_80", "temperature"):
        assert summary.loc[macro, metric].tolist() == pytest.approx(means[metric].tolist(), nan_ok=True)

    curves = read_table(outputs["curves"][0])
    assert list(curves.columns) == [*S.KEYS, "curve", "x", "y", "density"]
    sizes = curves.groupby(["method", "recalibration", "curve"], sort=False).size()
    assert sizes.tolist() == [101, 80] * 3 + [101, 101] * 3  # risk-coverage: every row count up to 100 rows
    smooth = curves["curve"] == "smooth_reliability"
    assert curves.loc[smooth, "density"].notna().all() and curves.loc[~smooth, "density"].isna().all()
    ends = curves[~smooth].groupby(["method", "recalibration"], sort=False).last()
    assert ends["x"].tolist() == pytest.approx([1.0] * 6)
    assert ends["y"].tolist() == pytest.approx((1 - micro["accuracy"]).tolist())

    for path in outputs.values():
        provenance = read_provenance(path[0])
        assert provenance["stage"] == "score" and provenance["model"] == "pythia-160m"
        assert provenance["n_bins"] == 10 and provenance["n_bootstrap"] == 100 and provenance["seed"] == 0
        assert provenance["sweep_bins"] == [5, 10, 15, 20] and provenance["input"]["stage"] == "recalibrate"
        assert "numpy" in provenance["packages"]


def test_score_matches_calibration_metrics(scored, tmp_path):
    # Multiple choice: questions stratified by subject, multi-class metrics from the option probabilities
    # where they are; CLM: a document's tokens drawn together.
    table = read_table(tmp_path / "recalibrated" / "mmlu" / "pythia-160m" / "step1000.parquet")
    out = tmp_path / "metrics" / "mmlu" / "pythia-160m" / "step1000"
    summary = read_table(out / "summary.parquet")
    summary = summary[summary["aggregation"] == "micro"].set_index(["method", "recalibration"])
    subjects = read_table(out / "subjects.parquet").set_index(["method", "recalibration", "subject"])
    curves = read_table(out / "curves.parquet")
    for method, recalibration in GROUPS:
        rows = table[(table["method"] == method) & (table["recalibration"] == recalibration)]
        mc = method == "softmax"
        options = {"option_probs": rows["option_probs"], "gold": rows["gold"]} if mc and recalibration != "platt" \
            else {}
        expected = M.calibration_metrics(rows["confidence"], rows["correct"], n_bootstrap=100, seed=0,
                                         units=rows["item_id"], strata=rows["subject"] if mc else None, **options,
                                         letter_mass=rows["letter_mass"] if mc else None)
        got = summary.loc[(method, recalibration)]
        assert {name: got[name] for name in M.METRIC_NAMES} == pytest.approx(expected, nan_ok=True)
        assert got["temperature"] == pytest.approx(S.mean_fold_temperature(rows), nan_ok=True)
        if mc:
            for subject, part in rows.groupby("subject"):
                expected = M.calibration_metrics(part["confidence"], part["correct"], n_bootstrap=0,
                                                 letter_mass=part["letter_mass"],
                                                 **{key: value[part.index] for key, value in options.items()})
                got = subjects.loc[(method, recalibration, subject)]
                assert {name: got[name] for name in M.METRIC_NAMES} == pytest.approx(expected, nan_ok=True)
        _, bandwidth = F.smooth_calibration_error(rows["confidence"], rows["correct"])
        mine = curves[(curves["method"] == method) & (curves["recalibration"] == recalibration)]
        smooth = F.smooth_reliability_curve(rows["confidence"], rows["correct"], bandwidth)
        risk = F.risk_coverage_curve(rows["confidence"], rows["correct"])
        pd.testing.assert_frame_equal(mine.loc[mine["curve"] == "smooth_reliability", ["x", "y", "density"]]
                                      .reset_index(drop=True), smooth)
        pd.testing.assert_frame_equal(mine.loc[mine["curve"] == "risk_coverage", ["x", "y"]].reset_index(drop=True),
                                      risk)


def test_score_without_two_subjects_has_no_macro_rows(tmp_path):
    rng = np.random.default_rng(1)
    table = _recalibrated_table(tmp_path / "one.parquet", rng, 40, 20, subjects=("law",))
    paths = _score(tmp_path / "one.parquet", tmp_path / "one", n_bootstrap=0)
    summary = read_table(paths["summary"])
    assert (summary["aggregation"] == "micro").all() and len(summary) == 6
    assert read_table(paths["subjects"])["subject"].tolist() == ["law"] * 3
    # CLM rows alone: no subject rows, an empty subjects table with its columns
    write_table(table[table["method"] == "max_prob"], tmp_path / "clm.parquet", {"stage": "recalibrate"})
    paths = _score(tmp_path / "clm.parquet", tmp_path / "clm", n_bootstrap=0)
    subjects = read_table(paths["subjects"])
    assert subjects.empty and list(subjects.columns) == [*S.KEYS, "subject", *S.METRIC_COLUMNS]
    assert read_table(paths["summary"])["params"].isna().all()  # no inference provenance: unknown


def test_score_reads_only_recalibrated_tables(tmp_path):
    source = tmp_path / "confidence.parquet"
    write_table(pd.DataFrame({"item_id": ["a", "b"], "method": "softmax", "confidence": [0.5, 0.6],
                              "correct": [True, False]}), source)
    with pytest.raises(ValueError, match=r"confidence\.parquet: no column 'recalibration': score and "
                                         r"compare read a recalibrated table"):
        _score(source, tmp_path)


def test_score_errors_name_the_method_and_recalibration(tmp_path):
    source = tmp_path / "recalibrated.parquet"
    rows = {"item_id": ["a", "b"], "method": "softmax", "recalibration": "platt", "correct": [True, False]}
    write_table(pd.DataFrame({**rows, "confidence": [0.5, 1.2]}), source)
    with pytest.raises(ValueError, match=r"method 'softmax', recalibration 'platt': confidence must be finite and "
                                         r"within \[0, 1\]"):
        _score(source, tmp_path)
    with pytest.raises(ValueError, match="labels may not reuse"):
        _score(source, tmp_path, labels={"method": "dpo"})
    with pytest.raises(ValueError, match="labels may not reuse"):
        _score(source, tmp_path, labels={"aggregation": "x"})
    rows["confidence"] = [0.5, 0.6]
    write_table(pd.DataFrame({**rows, "method": ["softmax", None]}), source)
    with pytest.raises(ValueError, match="1 rows have no method"):
        _score(source, tmp_path)
    write_table(pd.DataFrame({**rows, "recalibration": ["none", None]}), source)
    with pytest.raises(ValueError, match="1 rows have no recalibration"):
        _score(source, tmp_path)
    write_table(pd.DataFrame({**rows, "subject": ["law", None]}), source)
    with pytest.raises(ValueError, match=r"recalibrated\.parquet, method 'softmax', recalibration 'platt': strata "
                                         r"\(column 'subject'\) must not be missing: 1 of 2 values are"):
        _score(source, tmp_path)
    write_table(pd.DataFrame({**rows, "option_probs": [[0.5, 0.5], [0.4, 0.6]], "gold": [0, 2]}), source)
    with pytest.raises(ValueError, match=r"recalibration 'platt': gold must be an option index within \[0, 2\)"):
        _score(source, tmp_path)
    write_table(pd.DataFrame({"method": ["softmax"], "recalibration": ["none"], "confidence": [0.5]}), source)
    with pytest.raises(ValueError, match=r"missing columns \['item_id', 'correct'\]"):
        _score(source, tmp_path)
    assert not (tmp_path / "summary.parquet").exists()


def test_summarize_gathers_the_runs_with_union_of_labels(scored):
    root, outputs = scored
    out = root / "metrics"
    targets = [out / name for name in ("summary.parquet", "summary.csv", "reliability.parquet", "bin_sweep.parquet",
                                       "subjects.parquet", "curves.parquet")]
    summarize(*outputs.values(), *targets)

    summary = read_table(out / "summary.parquet")
    # runs in natural order (order.natural_order): tasks, then family olmo before pythia, whatever the input order
    runs = [("arc", "olmo-1b", "epoch2"), ("arc", "pythia-160m", "main"), ("mmlu", "pythia-160m", "step1000")]
    assert summary[["task", "model", "revision"]].drop_duplicates().values.tolist() == [list(r) for r in runs]
    first = read_table(outputs["summary"][0])  # a run's rows keep their order: method, recalibration, micro/macro
    pd.testing.assert_frame_equal(summary.iloc[-len(first):][list(first.columns[:-2])].reset_index(drop=True),
                                  first[first.columns[:-2]], check_dtype=False)
    assert list(summary.columns) == [*S.KEYS, "aggregation", *S.METRIC_COLUMNS, "params", "step", "epoch", "family",
                                     "tag", "data"]
    assert summary["step"].isna().sum() == 18  # revisions "main" and "epoch2" name no step
    assert summary["epoch"].tolist()[:9] == [2] * 9 and summary["epoch"][9:].isna().all()
    olmo = summary["model"] == "olmo-1b"
    assert summary.loc[~olmo, "data"].isna().all() and (summary.loc[olmo, "data"] == "dolma").all()
    # tag mixes a number and text across runs: it becomes text
    assert summary["tag"].tolist() == ["final"] * 9 + ["1"] * 18

    csv = pd.read_csv(out / "summary.csv")
    pd.testing.assert_frame_equal(csv, summary, check_dtype=False)

    reliability = read_table(out / "reliability.parquet")
    assert list(reliability.columns) == [*S.KEYS, *S.BIN_COLUMNS] and len(reliability) == 3 * 6 * 10
    counts = reliability.groupby([*S.KEYS], sort=False)["count"].sum()
    micro = summary[summary["aggregation"] == "micro"]
    assert counts.tolist() == micro["n"].tolist()
    sweep = read_table(out / "bin_sweep.parquet")
    assert len(sweep) == 3 * 6 * 4 and sweep.loc[sweep["n_bins"] == 10, "ece"].tolist() == pytest.approx(
        micro["ece"].tolist())
    subjects = read_table(out / "subjects.parquet")
    assert len(subjects) == 3 * 9 and subjects[["task", "model", "revision"]].drop_duplicates().values.tolist() == \
        [list(r) for r in runs]
    curves = read_table(out / "curves.parquet")
    assert len(curves) == 3 * (6 * 101 + 3 * 80 + 3 * 101)
    assert read_provenance(out / "summary.parquet")["stage"] == "summarize"
    for name, target in zip(["bins", "sweep", "subjects", "curves"], targets[2:]):
        assert set(read_provenance(target)["inputs"]) == {str(path) for path in outputs[name]}


def test_score_takes_the_step_and_epoch_it_is_given_not_the_revision_name(tmp_path):
    """The model registry's numbers: a revision's name is never read (``main`` of a model at step 7)."""
    _recalibrated_table(tmp_path / "r.parquet", np.random.default_rng(2), 20, 10)
    summary = read_table(_score(tmp_path / "r.parquet", tmp_path / "main", revision="main", step=7, epoch=3,
                                n_bootstrap=0)["summary"])
    assert (summary["step"] == 7).all() and (summary["epoch"] == 3).all()
    summary = read_table(_score(tmp_path / "r.parquet", tmp_path / "step5", revision="step5", n_bootstrap=0)["summary"])
    assert summary["step"].isna().all() and summary["epoch"].isna().all()


def test_relplot_metric_modules_load_without_its_plotting_and_agree_with_the_package():
    import subprocess
    import sys

    code = ("import sys, numpy as np; from workflow_scripts import scoring as S; "
            "print(S.smooth_calibration_error(np.array([0.2, 0.9, 0.7, 0.6]), np.array([0, 1, 1, 0]))[0]); "
            "print(sorted({'matplotlib', 'seaborn', 'relplot'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    import relplot

    assert float(out[0]) == relplot.smECE(np.array([0.2, 0.9, 0.7, 0.6]), np.array([0.0, 1.0, 1.0, 0.0]))
    assert out[1] == "[]"  # scoring loads neither relplot's plotting nor the package's __init__
