"""Tests of the calibration metrics and of the score / summarize stages."""
import bisect
import time

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
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


def naive_bootstrap_eces(conf, correct, n_bins, n_bootstrap, seed):
    """ECE of resamples drawn index by index."""
    rng = np.random.default_rng(seed)
    return np.array([M.expected_calibration_error(conf[i], correct[i], n_bins)
                     for i in rng.integers(0, len(conf), size=(n_bootstrap, len(conf)))])


@pytest.mark.parametrize("exact_cell_size", [0, 10**9])  # every cell by its normal limit / item by item
def test_bootstrap_agrees_with_index_resampling(monkeypatch, exact_cell_size):
    monkeypatch.setattr(M, "_EXACT_CELL_SIZE", exact_cell_size)
    conf, correct = _overconfident(3000, seed=1)
    eces = naive_bootstrap_eces(conf, correct, 10, 1500, seed=2)
    expected_low, expected_high = np.quantile(eces, [0.025, 0.975])
    low, high = M.bootstrap_ece_interval(conf, correct, n_bootstrap=3000, seed=3)
    width = expected_high - expected_low
    assert low == pytest.approx(expected_low, abs=0.1 * width)
    assert high == pytest.approx(expected_high, abs=0.1 * width)


def test_bootstrap_is_fast_on_a_million_tokens():
    conf, correct = _overconfident(10**6)
    start = time.perf_counter()
    low, high = M.bootstrap_ece_interval(conf, correct, n_bootstrap=1000)
    assert time.perf_counter() - start < 10.0
    assert low < M.expected_calibration_error(conf, correct) < high


def test_calibration_metrics_keys_and_values():
    result = M.calibration_metrics(CONF, CORRECT, n_bootstrap=200)
    assert list(result) == ["n", "accuracy", "mean_confidence", "ece", "mce", "ace", "brier", "auroc",
                            "ece_ci_low", "ece_ci_high"]
    assert result["n"] == 6 and result["accuracy"] == pytest.approx(0.5)
    assert result["mean_confidence"] == pytest.approx(2.95 / 6)
    assert result["ece"] == pytest.approx(1.85 / 6) and result["ace"] == pytest.approx(2.25 / 6)
    assert result["ece_ci_low"] <= result["ece_ci_high"]
    assert np.isnan(M.calibration_metrics(CONF, CORRECT, n_bootstrap=0)["ece_ci_low"])


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

def _confidence_table(path, rng, sizes):
    frames = []
    for method, size in sizes.items():
        conf = rng.uniform(0.3, 1.0, size)
        frames.append(pd.DataFrame({"item_id": [f"q{i}" for i in range(size)], "method": method,
                                    "confidence": conf, "correct": rng.uniform(size=size) < conf,
                                    "position": np.arange(size) % 3}))
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
        _confidence_table(source, rng, {"softmax": 150, "first_token": 80})
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
    assert summary["method"].tolist() == ["first_token", "softmax"]
    assert summary["n"].tolist() == [80, 150]
    assert (summary["task"] == "mmlu").all() and (summary["revision"] == "step1000").all()
    assert (summary["family"] == "pythia").all() and (summary["tag"] == 1).all()
    assert (summary["params"] == 1234).all() and (summary["step"] == 1000).all()  # from provenance, revision
    assert summary["epoch"].isna().all()

    table = read_table(bins[0])
    assert list(table.columns) == ["task", "model", "revision", "method", "bin", "bin_lower", "bin_upper",
                                   "count", "mean_confidence", "accuracy"]
    assert table.groupby("method")["count"].sum().to_dict() == {"first_token": 80, "softmax": 150}
    assert table.groupby("method").size().tolist() == [10, 10]

    provenance = read_provenance(summaries[0])
    assert provenance["stage"] == "score" and provenance["model"] == "pythia-160m"
    assert provenance["n_bins"] == 10 and provenance["n_bootstrap"] == 100 and provenance["seed"] == 0
    assert provenance["input"]["stage"] == "extract_confidence"
    assert "numpy" in provenance["packages"]
    assert read_provenance(bins[0])["stage"] == "score"


def test_score_matches_calibration_metrics(scored, tmp_path):
    source = tmp_path / "confidence" / "mmlu" / "pythia-160m" / "step1000.parquet"
    table = read_table(source)
    softmax = table[table["method"] == "softmax"]
    expected = M.calibration_metrics(softmax["confidence"], softmax["correct"], n_bootstrap=100, seed=0)
    row = read_table(tmp_path / "metrics" / "mmlu" / "pythia-160m" / "step1000.parquet").iloc[1]
    assert {name: row[name] for name in M.METRIC_NAMES} == pytest.approx(expected)


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
    write_table(pd.DataFrame({"method": ["softmax"], "confidence": [0.5]}), source)
    with pytest.raises(ValueError, match=r"missing columns \['item_id', 'correct'\]"):
        M.score(source, tmp_path / "s.parquet", tmp_path / "b.parquet", task="t", model="m", revision="r")
    assert not (tmp_path / "s.parquet").exists()


@pytest.mark.parametrize("revision,epoch", [("epoch1", 1), ("epoch12", 12), ("main", None), ("step3", None),
                                            ("epoch", None), ("epoch2b", None)])
def test_parse_epoch(revision, epoch):
    assert M.parse_epoch(revision) == epoch
