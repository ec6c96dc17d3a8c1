"""The ECE interval (bootstrap.bootstrap_ece_interval): it holds its own estimate, its lower bound covers the
true ECE of 0 of a calibrated model about as often as it should, and it is scipy.stats.bootstrap's where
they compute the same thing."""
import warnings

import hypothesis.strategies as st
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings

from workflow_scripts import bootstrap as B
from workflow_scripts import metric_table as M
from workflow_scripts import metrics as F

LEVEL = 0.95


def _calibrated(rng, n_rows, n_docs=None):
    """Rows of a perfectly calibrated model (confidence p, right with probability p; true ECE 0), in
    `n_docs` documents of random lengths where given (a document's rows are still independent)."""
    conf = rng.uniform(0.0, 1.0, n_rows)
    correct = rng.uniform(size=n_rows) < conf
    docs = None if n_docs is None else np.sort(rng.integers(0, n_docs, n_rows))
    return conf, correct, docs


def _bin_gaps(conf, correct, axis=-1, n_bins=10):
    """Per equal-width bin, (number correct - confidence sum) / rows, over the last axis (batched for scipy)."""
    one_hot = F.width_bin_index(conf, n_bins)[..., None] == np.arange(n_bins)
    return ((correct - conf)[..., None] * one_hot).sum(axis=-2) / conf.shape[-1]


def _lower_bound_coverage(intervals, n_replicates, n_rows, n_docs=None, seed=0):
    """Share of calibrated samples whose lower bound is at most 1e-12, for each interval(conf, correct, docs,
    seed) of `intervals`, on the same samples."""
    rng = np.random.default_rng(seed)
    covered = np.zeros(len(intervals))
    for replicate in range(n_replicates):
        sample = _calibrated(rng, n_rows, n_docs)
        covered += [interval(*sample, replicate)[0] <= 1e-12 for interval in intervals]
    return covered / n_replicates


def _ours(conf, correct, docs, seed):
    return B.bootstrap_ece_interval(conf, correct, n_bootstrap=400, level=LEVEL, seed=seed, units=docs)


@pytest.mark.parametrize(("n_rows", "n_docs"), [(200, None), (1000, None), (600, 60)])
def test_lower_bound_covers_the_zero_ece_of_a_calibrated_model(n_rows, n_docs):
    """The lower bound is 0 in about (1 + LEVEL) / 2 = 97.5% of calibrated samples (400 replicates: a binomial
    standard error of 0.8%, and 400 resamples estimate the quantile with some noise, which lowers it a little;
    the percentile interval's lower bound is never 0)."""
    coverage = _lower_bound_coverage([_ours], 400, n_rows, n_docs)[0]
    assert 0.94 <= coverage <= 0.995


def test_scipy_basic_and_bca_leave_out_the_zero_ece_of_a_calibrated_model():
    """Why neither of scipy.stats.bootstrap's corrected intervals is ours: on the same calibrated samples,
    their lower bounds exceed the true ECE of 0 far more often than 2.5% of the time."""
    def scipy_interval(method):
        def interval(conf, correct, docs, seed):
            with warnings.catch_warnings():  # BCa warns where the ECE lies below every resample's
                warnings.simplefilter("ignore")
                result = scipy.stats.bootstrap((conf, correct), lambda c, y, axis: np.abs(_bin_gaps(c, y)).sum(-1),
                                               paired=True, vectorized=True, n_resamples=400, method=method,
                                               confidence_level=LEVEL, rng=np.random.default_rng(seed))
            return np.nan_to_num(result.confidence_interval.low, nan=np.inf), None
        return interval

    ours, basic, bca = _lower_bound_coverage([_ours, scipy_interval("basic"), scipy_interval("BCa")], 100, 200)
    assert ours >= 0.94 and basic < 0.8 and bca < 0.2  # here 0.98, 0.60 and 0


def test_interval_is_scipy_percentile_quantile_of_the_deviations():
    """bootstrap_ece_interval reaches from the ECE by the upper percentile bound of the resampled deviations
    sum_b |resampled gap_b - gap_b|: given scipy's resamples, deviation_interval gives exactly scipy's."""
    conf, correct, _ = _calibrated(np.random.default_rng(1), 150)
    gaps = _bin_gaps(conf, correct)
    result = scipy.stats.bootstrap((conf, correct), lambda c, y, axis: np.abs(_bin_gaps(c, y) - gaps).sum(-1),
                                   paired=True, vectorized=True, n_resamples=999, method="percentile",
                                   confidence_level=LEVEL, rng=np.random.default_rng(2))
    ece = F.expected_calibration_error(conf, correct)
    low, high = B.deviation_interval(ece, result.bootstrap_distribution, LEVEL)
    assert high - ece == pytest.approx(result.confidence_interval.high, rel=1e-12)
    assert low == max(0.0, ece - (high - ece))
    # Our own resamples of the same rows give about the same reach.
    ours_low, ours_high = B.bootstrap_ece_interval(conf, correct, n_bootstrap=999, level=LEVEL, seed=3)
    assert ours_high - ece == pytest.approx(result.confidence_interval.high, rel=0.1)


def test_interval_of_a_clearly_miscalibrated_model_is_about_the_ece():
    """Far from 0 nothing is clipped: the interval is the ECE -/+ one reach, and holds the true ECE 0.1."""
    rng = np.random.default_rng(4)
    conf = rng.uniform(0.5, 1.0, 20000)
    correct = rng.uniform(size=len(conf)) < conf - 0.1
    ece = F.expected_calibration_error(conf, correct)
    low, high = B.bootstrap_ece_interval(conf, correct, n_bootstrap=500)
    assert 0 < low < 0.1 < high and high - ece == pytest.approx(ece - low, rel=1e-9)


rows = st.lists(st.tuples(st.floats(0.0, 1.0), st.booleans(), st.integers(0, 4)), min_size=1, max_size=40)


@settings(deadline=None, max_examples=150)
@given(rows, st.integers(1, 15), st.booleans(), st.booleans(), st.integers(0, 2**32 - 1))
def test_estimate_never_lies_outside_its_interval(data, n_bins, by_unit, stratified, seed):
    conf, correct, group = (np.array(column) for column in zip(*data))
    units = group if by_unit else None
    strata = (group % 2 if by_unit else np.arange(len(conf)) % 2) if stratified else None
    ece = F.expected_calibration_error(conf, correct, n_bins)
    low, high = B.bootstrap_ece_interval(conf, correct, n_bins, n_bootstrap=50, seed=seed, units=units,
                                         strata=strata)
    assert 0.0 <= low <= ece <= high


def test_summary_columns_hold_the_ece():
    """score's columns: ece_ci_low <= ece <= ece_ci_high on a small calibrated CLM-like run (here the percentile
    interval was [0.0386, 0.110] around an ECE of 0.0379)."""
    conf, correct, docs = _calibrated(np.random.default_rng(1), 300, 20)
    values = M.calibration_metrics(conf, correct, n_bootstrap=300, units=docs)
    assert values["ece_ci_low"] <= values["ece"] <= values["ece_ci_high"]
