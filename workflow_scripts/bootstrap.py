"""Bootstrap resampling of a run's units (items): the ECE interval of score, and the per-unit sums and draws
from which compare's paired bootstrap computes a metric on every resample without building its rows."""
from __future__ import annotations

import functools
import inspect

import numpy as np
import pandas as pd
import scipy.sparse

from .metrics import check_n_bins, expected_calibration_error, relplot_modules, validated, width_bin_index

# Cells of the bootstrap (one per stratum, bin and correctness) holding at most this many rows are resampled
# row by row; larger ones take the normal limit of their resampled confidence sum (see bootstrap_bin_gaps).
EXACT_CELL_SIZE = 2000
# Unit counts the ECE bootstrap over units of several rows holds at once (resamples x units; 32 MiB of float64).
UNIT_CHUNK_ELEMENTS = 2**22
# Elements of the smoothing map (evaluation points x grid) built at once (4 MiB), and how many such maps
# are kept (relplot's bandwidths are multiples of 2**-10, so sides share them: ~70 distinct ones in the
# default-sized workload of benchmarks/compare_speed.py).
SMOOTHING_CHUNK_ELEMENTS = 2**19
CACHED_SMOOTHING_MAPS = 128


def group_codes(values, name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer code per row of a grouping (rows with equal labels share one) and the labels, or ValueError."""
    if getattr(values, "name", None) is not None:
        name = f"{name} (column {values.name!r})"
    array = np.asarray(values, dtype=object)
    if array.shape != (n,):
        raise ValueError(f"{name} must be 1-D and as long as confidence ({n}), got shape {array.shape}")
    codes, labels = pd.factorize(array)
    if (codes < 0).any():
        raise ValueError(f"{name} must not be missing: {int((codes < 0).sum())} of {n} values are "
                         f"(e.g. at position {int(np.flatnonzero(codes < 0)[0])})")
    return codes, labels


def _row_bootstrap_gaps(conf, hit, bins, stratum, n_bins: int, n_bootstrap: int, rng) -> np.ndarray:
    """Bin gaps of resamples drawing every stratum's rows with replacement, by (stratum, bin, correct) cell."""
    cells = 2 * n_bins  # within a stratum, cell 2b: wrong in bin b, 2b+1: correct in bin b
    key = stratum * cells + 2 * bins + hit.astype(np.intp)
    sizes = np.bincount(key, minlength=(stratum.max() + 1) * cells)
    starts = np.cumsum(sizes) - sizes
    by_key = conf[np.argsort(key, kind="stable")]
    gaps = np.zeros((n_bootstrap, n_bins))  # per bin: number correct - confidence sum
    for first in range(0, len(sizes), cells):
        stratum_sizes = sizes[first:first + cells]
        drawn = rng.multinomial(stratum_sizes.sum(), stratum_sizes / stratum_sizes.sum(), size=n_bootstrap)
        for c in np.flatnonzero(stratum_sizes):
            values = by_key[starts[first + c]:starts[first + c] + stratum_sizes[c]]
            m = drawn[:, c]
            if stratum_sizes[c] <= EXACT_CELL_SIZE:
                picks = values[rng.integers(0, stratum_sizes[c], m.sum())]
                conf_sums = np.bincount(np.repeat(np.arange(n_bootstrap), m), weights=picks, minlength=n_bootstrap)
            else:
                conf_sums = m * values.mean() + np.sqrt(m * values.var()) * rng.standard_normal(n_bootstrap)
            gaps[:, c // 2] += (c % 2) * m - conf_sums
    return gaps / len(conf)


def _unit_bootstrap_gaps(conf, hit, bins, unit, unit_stratum, n_bins: int, n_bootstrap: int, rng) -> np.ndarray:
    """Bin gaps of resamples drawing every stratum's units with replacement, from per-unit bin gaps and sizes."""
    n_units = len(unit_stratum)
    unit_gaps = np.bincount(unit * n_bins + bins, weights=hit - conf, minlength=n_units * n_bins)
    unit_gaps = unit_gaps.reshape(n_units, n_bins)  # per unit and bin: number correct - confidence sum
    unit_rows = np.bincount(unit, minlength=n_units).astype(np.float64)
    members = [np.flatnonzero(unit_stratum == s) for s in range(unit_stratum.max() + 1)]
    chunk = max(1, UNIT_CHUNK_ELEMENTS // n_units)
    gaps = np.empty((n_bootstrap, n_bins))
    for start in range(0, n_bootstrap, chunk):
        size = min(chunk, n_bootstrap - start)
        counts = np.empty((size, n_units))  # times each unit is drawn, per resample
        for units in members:
            counts[:, units] = rng.multinomial(len(units), np.full(len(units), 1.0 / len(units)), size=size)
        gaps[start:start + size] = (counts @ unit_gaps) / (counts @ unit_rows)[:, None]
    return gaps


def stratum_of_units(unit: np.ndarray, stratum: np.ndarray) -> tuple[np.ndarray, int | None]:
    """The stratum code of each unit (codes 0..max of `unit`), and the first row whose unit also has rows
    in another stratum (None where every unit lies in one)."""
    of_unit = np.zeros(unit.max() + 1, dtype=np.intp)
    of_unit[unit] = stratum
    split = np.flatnonzero(of_unit[unit] != stratum)
    return of_unit, (int(split[0]) if len(split) else None)


def bootstrap_bin_gaps(
    confidence, correct, n_bins: int = 10, n_bootstrap: int = 1000, seed: int = 0, units=None, strata=None,
) -> tuple[np.ndarray, np.ndarray]:
    """The bin gaps of the rows and of `n_bootstrap` resamples of their independent units: per equal-width bin,
    (number correct - confidence sum) / rows (n_bins; n_bootstrap x n_bins). The ECE is the sum of their
    absolute values.

    Rows sharing a label of `units` form one unit (a CLM document's tokens; default: every row its own
    unit). With `strata` (a label per row, one per unit), every stratum's units are resampled separately,
    as many as it has. A resample's gaps count every row drawn and divide by the rows drawn.

    When every unit is one row, a resample's gaps depend only on, per (stratum, bin, correct) cell, how
    many rows were drawn from it and the sum of their confidences. The cell counts are drawn exactly
    (multinomial over a stratum's cells, the same as drawing its rows uniformly). Within a cell, the
    confidences are drawn row by row when the cell holds at most `EXACT_CELL_SIZE` rows; for a larger
    cell the sum of its m drawn confidences is taken from its normal limit, with the exact mean m*mean
    and variance m*var of that sum. Such a sum adds over 2000 bounded draws (CLT) and varies far less
    than the counts do (the confidences of a bin span at most 1/n_bins), so the interval is unchanged in
    practice, while 1e6 rows x 1000 resamples take a fraction of a second instead of tens of seconds.
    Otherwise each unit is reduced to its row count and per-bin (number correct - confidence sum); a
    resample is a multinomial count per unit, and resamples are processed `UNIT_CHUNK_ELEMENTS` counts at a time.
    """
    check_n_bins(n_bins)
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    conf, hit = validated(confidence, correct)
    n = len(conf)
    unit, unit_labels = (np.arange(n), None) if units is None else group_codes(units, "units", n)
    stratum, stratum_labels = (np.zeros(n, dtype=np.intp), None) if strata is None else group_codes(strata, "strata", n)
    unit_stratum, row = stratum_of_units(unit, stratum)
    if row is not None:
        raise ValueError(f"a unit must lie in one stratum: unit {unit_labels[unit[row]]!r} has rows in strata "
                         f"{stratum_labels[stratum[row]]!r} and {stratum_labels[unit_stratum[unit[row]]]!r}")
    rng = np.random.default_rng(seed)
    bins = width_bin_index(conf, n_bins)
    if len(unit_stratum) == n:
        resampled = _row_bootstrap_gaps(conf, hit, bins, stratum, n_bins, n_bootstrap, rng)
    else:
        resampled = _unit_bootstrap_gaps(conf, hit, bins, unit, unit_stratum, n_bins, n_bootstrap, rng)
    return np.bincount(bins, weights=hit - conf, minlength=n_bins) / n, resampled


def deviation_interval(ece: float, deviations, level: float = 0.95) -> tuple[float, float]:
    """ece -/+ the (1 + level) / 2 quantile of the resampled `deviations` (numpy's linear quantile), the lower
    bound clipped at 0: the interval bootstrap_ece_interval makes of them."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be within (0, 1), got {level}")
    reach = float(np.quantile(deviations, (1.0 + level) / 2.0))
    return max(0.0, ece - reach), ece + reach


def bootstrap_ece_interval(
    confidence, correct, n_bins: int = 10, n_bootstrap: int = 1000, level: float = 0.95, seed: int = 0,
    units=None, strata=None,
) -> tuple[float, float]:
    """Bootstrap interval of the true ECE, resampling independent units (bootstrap_bin_gaps says how), that
    holds the ECE of the rows: ECE -/+ d, the lower bound clipped at 0 (an ECE is never negative).

    The true ECE is sum_b |true gap_b| and the ECE of the rows sum_b |gap_b|; by the triangle inequality they
    differ by at most D = sum_b |gap_b - true gap_b|, whatever the true gaps are. D's distribution is taken
    as that of sum_b |resampled gap_b - gap_b| over the resamples, and d is its (1 + level) / 2 quantile, so
    that each bound holds with at least that probability. Where the model is calibrated (every true gap 0),
    the ECE of the rows is D itself: the lower bound is 0 with probability (1 + level) / 2, as it should be.
    The percentile interval of the resampled ECEs does not do that: the ECE of the rows is biased upward near
    0 and a resample's ECE is biased again, so its interval can lie wholly above the ECE; the basic and BCa
    intervals of scipy.stats.bootstrap leave 0 out of their lower bound far more often than 1 - level / 2
    (docs/metrics.md has the numbers).
    """
    gaps, resampled = bootstrap_bin_gaps(confidence, correct, n_bins, n_bootstrap, seed, units, strata)
    deviations = np.abs(resampled - gaps).sum(axis=1)
    return deviation_interval(expected_calibration_error(confidence, correct, n_bins), deviations, level)


def resample_counts(unit_strata, n_bootstrap: int, seed: int) -> np.ndarray:
    """How often each unit is drawn in each resample (n_bootstrap x units, float64).

    `unit_strata` holds the stratum code of every unit (units in sorted order); every stratum's units are
    drawn with replacement, as many as it has (a multinomial per stratum, strata in code order), from
    numpy default_rng(seed), as bootstrap_bin_gaps draws them.
    """
    strata = np.asarray(unit_strata, dtype=np.intp)
    rng = np.random.default_rng(seed)
    counts = np.empty((n_bootstrap, len(strata)))
    for stratum in range(strata.max() + 1):
        members = np.flatnonzero(strata == stratum)
        counts[:, members] = rng.multinomial(len(members), np.full(len(members), 1.0 / len(members)),
                                             size=n_bootstrap)
    return counts


def unit_sums(unit, weights, n_units: int, columns=None, n_columns: int = 1) -> np.ndarray:
    """Sums of `weights` (None: ones) per unit and column (units x n_columns)."""
    index = unit if columns is None else unit * n_columns + columns
    return np.bincount(index, weights=weights, minlength=n_units * n_columns).reshape(n_units, n_columns)


def smoothed_per_unit(conf, residual, unit, n_units: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Per unit, relplot's kernel smoothing (ReflectedGaussianKernel.apply at bandwidth `sigma`) of its rows'
    residuals at smooth_ece's evaluation points, and of its rows' ones summed over those points.

    relplot.metrics.smooth_ece(f, y, sigma) = sum_t |apply(f, f - y)(t)| / sum_t (apply(f, 1)(t) + eps), and
    apply is linear in the weights: smooth_round_to_grid splits each row's weight between two grid points,
    then a reflected convolution and a linear interpolation at the points t map the grid to t. So a
    resample drawing unit u c_u times has apply = sum_u c_u * apply(unit u's rows). Here the grid weights of
    every unit (a sparse units x grid matrix) are multiplied by that map from the grid to t.
    """
    relplot = relplot_modules()
    if relplot.config.use_logit_scaling:
        raise ValueError("relplot.config.use_logit_scaling is set: its logit kernel is not linear in the rows, "
                         "so the resampled smECE cannot be built from per-unit sums")
    points = max(round(10 / sigma), relplot.config.smECE_mesh_pts)  # as relplot.metrics.smooth_ece
    grid = max(2000, round(20 / sigma)) // 2 + 1  # as GaussianKernel.apply
    position = conf * (grid - 1)  # as smooth_round_to_grid
    cell = position.astype(int).clip(0, grid - 2)
    frac = position - cell
    shape = (n_units, grid)
    spread = (np.concatenate([unit, unit]), np.concatenate([cell, cell + 1]))
    residuals = scipy.sparse.csr_array((np.concatenate([(1 - frac) * residual, frac * residual]), spread), shape)
    ones = scipy.sparse.csr_array((np.concatenate([1 - frac, frac]), spread), shape)
    smoothed = np.empty((n_units, points))
    density = np.zeros(n_units)
    step = max(1, SMOOTHING_CHUNK_ELEMENTS // grid)
    for first in range(0, points, step):
        operator, column_sums = _grid_to_points(sigma, grid, points, first, min(first + step, points))
        smoothed[:, first:first + step] = residuals @ operator.T
        density += ones @ column_sums
    return smoothed, density


@functools.cache
def relplot_density_eps() -> float:
    """What relplot.smooth_ece adds to the kernel density at every evaluation point (BaseKernelMixin.smooth)."""
    return inspect.signature(relplot_modules().kernels.BaseKernelMixin.smooth).parameters["eps"].default


@functools.lru_cache(maxsize=CACHED_SMOOTHING_MAPS)
def _grid_to_points(sigma: float, grid: int, points: int, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """The matrix (stop - first x grid) of ReflectedGaussianKernel(sigma).convolve followed by
    relplot.kernels.interpolate at the evaluation points t[first:stop] of np.linspace(0, 1, points): row k
    holds, for every grid point, its weight at t[first + k]; and its column sums."""
    t = np.linspace(0, 1, points)[first:stop]
    kernel = relplot_modules().kernels.ReflectedGaussianKernel(sigma).kernel_ev(grid)
    # interpolate: t lies between grid points left and left + 1.
    left = (t * (grid - 1)).astype(int).clip(0, grid - 2)
    weight = (t - left * (1 / (grid - 1))) / (1 / (grid - 1))
    # convolve: output s = np.convolve(extended, kernel, "valid")[grid // 2 + s] = sum_j kernel[j] *
    # extended[grid // 2 + s + grid - 1 - j], with extended = [values[:0:-1], values, values[-2::-1]];
    # extended position e holds values[e - (grid - 1)], reflected at both ends.
    # Kernel values that underflow to 0 (beyond about 38 sigma) add nothing and are left out.
    j = np.flatnonzero(kernel)
    rows = np.stack([left, left + 1], axis=1)[:, :, None]  # (points, 2, 1): the outputs s interpolated
    e = grid // 2 + rows + grid - 1 - j
    source = np.abs(e - (grid - 1))
    source = np.where(source > grid - 1, 2 * (grid - 1) - source, source)
    weights = np.stack([1 - weight, weight], axis=1)[:, :, None] * kernel[j]
    index = np.arange(len(t))[:, None, None] * grid + source
    operator = np.bincount(index.ravel(), weights=weights.ravel(), minlength=len(t) * grid).reshape(len(t), grid)
    operator.setflags(write=False)
    column_sums = operator.sum(axis=0)
    column_sums.setflags(write=False)
    return operator, column_sums
