"""The metrics table: every metric a run's scored rows get, declared once (METRICS). score reports each of
them per run; compare's paired bootstrap compares those that have a resampled form."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from .bootstrap import bootstrap_ece_interval, relplot_density_eps, smoothed_per_unit, unit_sums
from .kinds import KINDS
from .metrics import (
    accuracy_at_coverage,
    adaptive_calibration_error,
    area_under_risk_coverage,
    auroc,
    brier_score,
    debiased_calibration_error,
    expected_calibration_error,
    expected_errors,
    maximum_calibration_error,
    mean_letter_mass,
    multiclass_brier_score,
    negative_log_likelihood,
    option_matrix,
    rms_calibration_error,
    smooth_calibration_error,
    static_calibration_error,
    validated,
    width_bin_index,
)

# The columns of a recalibrated table that score and compare read.
RECALIBRATED_COLUMNS = ("item_id", "method", "confidence", "correct", "recalibration")
# The columns that group a run's items (kinds.KINDS); the bootstrap stratifies by the first a method's rows fill.
STRATA_COLUMNS = tuple(dict.fromkeys(column for kind in KINDS.values() for column in kind.strata))


class ScoredRows:
    """The scored rows of one run, method and recalibration, as the metrics read them.

    `confidence` and `correct` (validated), the bin count, the option probabilities and gold options of
    multiple choice (the multi-class metrics: both or neither), the letter mass, and what shapes the ECE
    interval: `units` (item ids; rows sharing one are resampled together), `strata`, `n_bootstrap` (0: no
    interval) and `seed`. What several metrics share is computed once, on first use. `smooth` is
    smooth_calibration_error of these rows where the caller has it already.
    """

    def __init__(self, confidence, correct, n_bins: int = 10, *, option_probs=None, gold=None, letter_mass=None,
                 units=None, strata=None, n_bootstrap: int = 0, seed: int = 0, smooth=None):
        self.confidence, self.correct = validated(confidence, correct)
        if (option_probs is None) != (gold is None):
            raise ValueError("option_probs and gold come together: give both or neither")
        for name, values in (("option_probs", option_probs), ("letter_mass", letter_mass)):
            if values is not None and len(values) != len(self.confidence):
                raise ValueError(f"{name} and confidence differ in length: {len(values)} vs {len(self.confidence)}")
        self.n_bins, self.option_probs, self.gold, self.letter_mass = n_bins, option_probs, gold, letter_mass
        self.units, self.strata, self.n_bootstrap, self.seed = units, strata, n_bootstrap, seed
        if smooth is not None:
            self.smooth = smooth

    def binned(self, function) -> float:
        """`function`(confidence, correct, n_bins) of these rows."""
        return function(self.confidence, self.correct, self.n_bins)

    def options(self, function, *args) -> float:
        """`function`(option_probs, gold, *args) of these rows; NaN where they have no option probabilities."""
        if self.option_probs is None:
            return float("nan")
        return function(self.option_probs, self.gold, *args)

    @cached_property
    def smooth(self) -> tuple[float, float]:
        """smECE and its bandwidth (smooth_calibration_error)."""
        return smooth_calibration_error(self.confidence, self.correct)

    @cached_property
    def expected_errors(self) -> np.ndarray:
        """expected_errors of these rows, for the risk-coverage metrics."""
        return expected_errors(self.confidence, self.correct)

    @cached_property
    def ece_interval(self) -> tuple[float, float]:
        """bootstrap_ece_interval over the units and strata; NaN without resamples (n_bootstrap 0)."""
        if not self.n_bootstrap:
            return float("nan"), float("nan")
        return bootstrap_ece_interval(self.confidence, self.correct, self.n_bins, self.n_bootstrap, seed=self.seed,
                                      units=self.units, strata=self.strata)

    @cached_property
    def unit_index(self) -> tuple[np.ndarray, np.ndarray]:
        """The unit of each row (a code into the sorted unit labels) and those labels, for resampled forms."""
        if self.units is None:
            raise ValueError("a resampled metric needs the rows' units")
        unit, labels = pd.factorize(np.asarray(self.units, dtype=object), sort=True)
        if (unit < 0).any():
            raise ValueError(f"units (item_id) must not be missing: {int((unit < 0).sum())} of {len(unit)} rows "
                             f"lack one")
        return unit, labels

    def per_unit(self, weights, columns=None, n_columns: int = 1) -> np.ndarray:
        """unit_sums of `weights` (None: ones) over these rows' units (units x n_columns)."""
        unit, labels = self.unit_index
        return unit_sums(unit, weights, len(labels), columns, n_columns)


# A resampled form: from a run's rows, the function from resample counts (resamples x units, bootstrap's
# resample_counts over unit_index's units) to the metric of every resample, computed from per-unit sums.
Resampled = Callable[[ScoredRows], Callable[[np.ndarray], np.ndarray]]


@dataclass(frozen=True)
class Metric:
    """A metric: its value on a run's scored rows and, where compare compares it, its resampled form."""

    value: Callable[[ScoredRows], float]
    resampled: Resampled | None = None


def _resampled_accuracy(rows: ScoredRows) -> Callable[[np.ndarray], np.ndarray]:
    """Accuracy from the rows and the right rows per unit."""
    sizes, hits = rows.per_unit(None)[:, 0], rows.per_unit(rows.correct)[:, 0]
    return lambda counts: counts @ hits / (counts @ sizes)


def _resampled_ece(rows: ScoredRows) -> Callable[[np.ndarray], np.ndarray]:
    """ECE from the rows per unit and, per unit and equal-width bin, number right - confidence sum."""
    sizes = rows.per_unit(None)[:, 0]
    gaps = rows.per_unit(rows.correct - rows.confidence, width_bin_index(rows.confidence, rows.n_bins), rows.n_bins)
    return lambda counts: np.abs(counts @ gaps).sum(axis=1) / (counts @ sizes)


def _resampled_smooth_ece(rows: ScoredRows) -> Callable[[np.ndarray], np.ndarray]:
    """smECE at the full sample's bandwidth (relplot.metrics.smECE_sigma), from smoothed_per_unit."""
    unit, labels = rows.unit_index
    residuals, density = smoothed_per_unit(rows.confidence, rows.confidence - rows.correct, unit, len(labels),
                                           rows.smooth[1])
    eps = relplot_density_eps() * residuals.shape[1]
    return lambda counts: np.abs(counts @ residuals).sum(axis=1) / (counts @ density + eps)


def _resampled_sce(rows: ScoredRows) -> Callable[[np.ndarray], np.ndarray]:
    """SCE from per unit, option position and bin, the sum of 1[gold == k] - p_k, and per unit and position,
    the rows having that option; NaN where the rows have no option probabilities."""
    if rows.option_probs is None:
        return lambda counts: np.full(len(counts), np.nan)
    matrix, lengths, gold = option_matrix(rows.option_probs, rows.gold)
    unit, labels = rows.unit_index
    positions = np.arange(matrix.shape[1])
    has = positions < lengths[:, None]
    residual = np.where(has, (gold[:, None] == positions) - matrix, 0.0)
    cell = positions * rows.n_bins + width_bin_index(matrix.ravel(), rows.n_bins).reshape(matrix.shape)
    row_unit = np.repeat(unit, len(positions))
    gaps = unit_sums(row_unit, residual.ravel(), len(labels), cell.ravel(), len(positions) * rows.n_bins)
    having = unit_sums(row_unit, has.ravel().astype(np.float64), len(labels), np.tile(positions, len(matrix)),
                       len(positions))

    def values(counts: np.ndarray) -> np.ndarray:
        items = counts @ having
        errors = np.abs((counts @ gaps).reshape(*items.shape, -1)).sum(axis=2)
        per_option = np.divide(errors, items, out=np.full(items.shape, np.nan), where=items > 0)
        return np.nanmean(per_option, axis=1)  # every resample has an item with option 0

    return values


def _letter_mass(rows: ScoredRows) -> float:
    """mean_letter_mass of the rows' letter_mass; NaN without it."""
    return float("nan") if rows.letter_mass is None else mean_letter_mass(rows.letter_mass)


# Every metric, in the order of the summary's columns. brier_multiclass and sce need option probabilities
# (NaN without), letter_mass its column (NaN without), the interval n_bootstrap > 0 (NaN without).
METRICS: dict[str, Metric] = {
    "n": Metric(lambda rows: len(rows.confidence)),
    "accuracy": Metric(lambda rows: float(rows.correct.mean()), _resampled_accuracy),
    "mean_confidence": Metric(lambda rows: float(rows.confidence.mean())),
    "ece": Metric(lambda rows: rows.binned(expected_calibration_error), _resampled_ece),
    "mce": Metric(lambda rows: rows.binned(maximum_calibration_error)),
    "ace": Metric(lambda rows: rows.binned(adaptive_calibration_error)),
    "brier": Metric(lambda rows: brier_score(rows.confidence, rows.correct)),
    "brier_multiclass": Metric(lambda rows: rows.options(multiclass_brier_score)),
    "letter_mass": Metric(_letter_mass),
    "auroc": Metric(lambda rows: auroc(rows.confidence, rows.correct)),
    "rmsce": Metric(lambda rows: rows.binned(rms_calibration_error)),
    "ece_debiased": Metric(lambda rows: rows.binned(debiased_calibration_error)),
    "smece": Metric(lambda rows: rows.smooth[0], _resampled_smooth_ece),
    "nll": Metric(lambda rows: negative_log_likelihood(rows.confidence, rows.correct)),
    "sce": Metric(lambda rows: rows.options(static_calibration_error, rows.n_bins), _resampled_sce),
    "aurc": Metric(lambda rows: area_under_risk_coverage(rows.confidence, rows.correct, rows.expected_errors)[0]),
    "eaurc": Metric(lambda rows: area_under_risk_coverage(rows.confidence, rows.correct, rows.expected_errors)[1]),
    "acc_at_coverage_50": Metric(lambda rows: accuracy_at_coverage(rows.confidence, rows.correct, 0.5,
                                                                   rows.expected_errors)),
    "acc_at_coverage_80": Metric(lambda rows: accuracy_at_coverage(rows.confidence, rows.correct, 0.8,
                                                                   rows.expected_errors)),
    "ece_ci_low": Metric(lambda rows: rows.ece_interval[0]),
    "ece_ci_high": Metric(lambda rows: rows.ece_interval[1]),
}
METRIC_NAMES = tuple(METRICS)


def metric_values(rows: ScoredRows) -> dict:
    """Every metric of METRICS on `rows`, keyed and ordered as METRIC_NAMES."""
    return {name: metric.value(rows) for name, metric in METRICS.items()}


def calibration_metrics(
    confidence, correct, n_bins: int = 10, n_bootstrap: int = 1000, seed: int = 0, *,
    units=None, strata=None, option_probs=None, gold=None, letter_mass=None, smooth=None,
) -> dict:
    """metric_values of the rows these arrays make (ScoredRows says what each argument is for)."""
    return metric_values(ScoredRows(confidence, correct, n_bins, option_probs=option_probs, gold=gold,
                                    letter_mass=letter_mass, units=units, strata=strata, n_bootstrap=n_bootstrap,
                                    seed=seed, smooth=smooth))


def filled_column(rows: pd.DataFrame, column: str) -> pd.Series | None:
    """`column` of some rows, or None where the table lacks it or it is empty for those rows."""
    return rows[column] if column in rows and rows[column].notna().any() else None


def strata_of(rows: pd.DataFrame) -> pd.Series | None:
    """The stratum of each of a method's rows: the first of STRATA_COLUMNS they fill (None: no strata)."""
    return next((rows[column] for column in STRATA_COLUMNS if filled_column(rows, column) is not None), None)
