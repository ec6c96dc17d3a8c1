"""The metric functions: each a number (or a table) from the confidences and correctness of a set of rows,
and for the multi-class metrics from their option probabilities and gold options. The metrics table
(metric_table.METRICS) says which of them score and compare report."""
from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types

import numpy as np
import pandas as pd
from scipy.special import ndtr

_RELPLOT_CORE = "_relplot_core"  # the name relplot_modules loads relplot's metric modules under


def option_indices(gold, lengths) -> tuple[np.ndarray, np.ndarray]:
    """`gold` as integer option indices, and where it is no index of its item's `lengths` options
    (those positions hold 0); ValueError for values that are not numbers."""
    values = np.asarray(gold)
    try:
        numeric = values.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"gold must be integer option indices, got dtype {values.dtype}") from None
    invalid = ~(np.isfinite(numeric) & (numeric == np.round(numeric)) & (numeric >= 0) & (numeric < lengths))
    return np.where(invalid, 0, numeric).astype(np.int64), invalid


def unparsed_rows(table: pd.DataFrame) -> np.ndarray:
    """Rows that have no confidence to score: column ``parsed`` false (a verbalized reply that did not parse)."""
    return table["parsed"].eq(False).to_numpy() if "parsed" in table else np.zeros(len(table), dtype=bool)


def validated(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    """`confidence` as float64 in [0, 1] and `correct` as float64 0/1, or ValueError."""
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct)
    if conf.ndim != 1 or hit.ndim != 1:
        raise ValueError(f"confidence and correct must be 1-D, got shapes {conf.shape} and {hit.shape}")
    if len(conf) != len(hit):
        raise ValueError(f"confidence and correct differ in length: {len(conf)} vs {len(hit)}")
    if len(conf) == 0:
        raise ValueError("no items: confidence and correct are empty")
    bad = ~(np.isfinite(conf) & (conf >= 0.0) & (conf <= 1.0))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"confidence must be finite and within [0, 1]: {int(bad.sum())} of {len(conf)} values are not "
            f"(e.g. {conf[first].item()!r} at position {first})"
        )
    if hit.dtype != np.bool_:
        try:
            numeric = hit.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"correct must be boolean (or 0/1) and not missing, got dtype {hit.dtype}") from None
        not_binary = ~np.isin(numeric, (0.0, 1.0))
        if not_binary.any():
            first = int(np.flatnonzero(not_binary)[0])
            raise ValueError(
                f"correct must be boolean (or 0/1): {int(not_binary.sum())} of {len(hit)} values are not "
                f"(e.g. {hit[first:first + 1].tolist()[0]!r} at position {first})"
            )
        hit = numeric
    return conf, hit.astype(np.float64)


def check_n_bins(n_bins: int) -> None:
    """ValueError unless `n_bins` is a positive integer."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")


def width_bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each confidence: [i/n, (i+1)/n), the last bin closed so that 1.0 counts."""
    edges = np.arange(n_bins + 1) / n_bins
    return np.minimum(np.searchsorted(edges, conf, side="right") - 1, n_bins - 1)


def _bin_totals(conf: np.ndarray, hit: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: item count, sum of confidences, number correct."""
    index = width_bin_index(conf, n_bins)
    return (
        np.bincount(index, minlength=n_bins),
        np.bincount(index, weights=conf, minlength=n_bins),
        np.bincount(index, weights=hit, minlength=n_bins),
    )


def reliability_bins(confidence, correct, n_bins: int = 10) -> pd.DataFrame:
    """Reliability table over `n_bins` equal-width bins of [0, 1] (empty bins have NaN means)."""
    check_n_bins(n_bins)
    conf, hit = validated(confidence, correct)
    count, conf_sum, hit_sum = _bin_totals(conf, hit, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, hit_sum / count, np.nan)
    bins = np.arange(n_bins)
    return pd.DataFrame({
        "bin": bins.astype(np.int64),
        "bin_lower": bins / n_bins,
        "bin_upper": (bins + 1) / n_bins,
        "count": count.astype(np.int64),
        "mean_confidence": mean_confidence,
        "accuracy": accuracy,
    })


def expected_calibration_error(confidence, correct, n_bins: int = 10) -> float:
    """ECE over equal-width bins: sum over bins of count/N * |accuracy - mean confidence|."""
    check_n_bins(n_bins)
    conf, hit = validated(confidence, correct)
    _, conf_sum, hit_sum = _bin_totals(conf, hit, n_bins)
    return float(np.abs(hit_sum - conf_sum).sum() / len(conf))


def maximum_calibration_error(confidence, correct, n_bins: int = 10) -> float:
    """MCE: the largest |accuracy - mean confidence| over the non-empty equal-width bins."""
    check_n_bins(n_bins)
    conf, hit = validated(confidence, correct)
    count, conf_sum, hit_sum = _bin_totals(conf, hit, n_bins)
    full = count > 0
    return float(np.max(np.abs(hit_sum[full] - conf_sum[full]) / count[full]))


def adaptive_calibration_error(confidence, correct, n_bins: int = 10) -> float:
    """ECE over equal-mass bins, as HELM's `ece_10_bin` (`calibration.get_ece_em` of Kumar et al.).

    The sorted confidences are split into min(n_bins, N) near-equal parts (np.array_split); a bin edge
    lies midway between the last value of a part and the first of the next, plus an edge at 1.0;
    duplicate edges collapse (ties can merge bins). An item goes to the first edge >= its confidence.
    """
    check_n_bins(n_bins)
    conf, hit = validated(confidence, correct)
    index = _equal_mass_bin_index(conf, n_bins)
    conf_sum, hit_sum = np.bincount(index, weights=conf), np.bincount(index, weights=hit)
    return float(np.abs(hit_sum - conf_sum).sum() / len(conf))


def rms_calibration_error(confidence, correct, n_bins: int = 10) -> float:
    """RMSCE over equal-width bins: sqrt(sum over bins of count/N * (accuracy - mean confidence)^2)."""
    check_n_bins(n_bins)
    conf, hit = validated(confidence, correct)
    count, conf_sum, hit_sum = _bin_totals(conf, hit, n_bins)
    full = count > 0
    return float(np.sqrt(np.sum((hit_sum[full] - conf_sum[full]) ** 2 / count[full]) / len(conf)))


def _equal_mass_bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-mass bin of each confidence, as `calibration.get_equal_bins` (see adaptive_calibration_error)."""
    ordered = np.sort(conf)
    parts = min(n_bins, len(ordered))
    # np.array_split gives the first N % parts parts one extra item.
    quotient, remainder = divmod(len(ordered), parts)
    part_ends = np.cumsum([quotient + 1] * remainder + [quotient] * (parts - remainder))[:-1]
    midpoints = (ordered[part_ends - 1] + ordered[part_ends]) / 2.0
    edges = np.unique(np.append(midpoints, 1.0))
    return np.searchsorted(edges, conf, side="left")


def debiased_calibration_error(confidence, correct, n_bins: int = 10) -> float:
    """Debiased ECE of Kumar et al. (2019) on the equal-mass bins of adaptive_calibration_error.

    Per bin b of n_b rows, accuracy a_b and mean confidence c_b: 2 |a_b - c_b| - E|A - c_b| with
    A ~ Normal(a_b, a_b (1 - a_b) / n_b), weighted by n_b / N. `calibration.get_ece_em(debias=True)`
    estimates E|A - c_b| from 1000 random draws; here it is the folded-normal mean
    s sqrt(2/pi) exp(-d^2 / 2s^2) + d (1 - 2 Phi(-d/s)) (d = a_b - c_b, s its standard deviation), the
    limit of those draws, so the value is deterministic. A bin of one row has a_b in {0, 1}, so s = 0 and
    it keeps its plain |a_b - c_b| (no correction; the package refuses bins of fewer than 2 rows).
    """
    check_n_bins(n_bins)
    conf, hit = validated(confidence, correct)
    index = _equal_mass_bin_index(conf, n_bins)
    count = np.bincount(index)
    full = count > 0  # ties can leave a bin empty
    count = count[full]
    accuracy = np.bincount(index, weights=hit)[full] / count
    gap = accuracy - np.bincount(index, weights=conf)[full] / count
    sd = np.sqrt(accuracy * (1.0 - accuracy) / count)
    folded = np.abs(gap)
    spread = sd > 0
    d, s = gap[spread], sd[spread]
    folded[spread] = s * np.sqrt(2.0 / np.pi) * np.exp(-d ** 2 / (2.0 * s ** 2)) + d * (1.0 - 2.0 * ndtr(-d / s))
    return float(np.sum(count * (2.0 * np.abs(gap) - folded)) / len(conf))


def relplot_modules() -> types.SimpleNamespace:
    """relplot's own `metrics`, `kernels` and `config` modules, loaded without the package's __init__,
    which imports its plotting (matplotlib, seaborn, scikit-learn's ensembles): 1.6 s of each of the
    ~130 scoring jobs of the default run, for code no metric uses. They are loaded as the package
    `_relplot_core`, so an `import relplot` elsewhere gets the whole package, unaffected."""
    if _RELPLOT_CORE not in sys.modules:
        found = importlib.util.find_spec("relplot")
        if found is None:
            raise ModuleNotFoundError("relplot is not installed (requirements.txt)", name="relplot")
        spec = importlib.util.spec_from_file_location(_RELPLOT_CORE, found.origin,
                                                      submodule_search_locations=found.submodule_search_locations)
        sys.modules[_RELPLOT_CORE] = importlib.util.module_from_spec(spec)  # its __init__ is not run
    return types.SimpleNamespace(**{name: importlib.import_module(f"{_RELPLOT_CORE}.{name}")
                                    for name in ("metrics", "kernels", "config")})


def smooth_calibration_error(confidence, correct) -> tuple[float, float]:
    """smECE of Blasiok & Nakkiran (2023), `relplot.smECE`, and the kernel bandwidth its fixed-point
    search chose: the reflected-Gaussian kernel smoothing of the residuals confidence - correct,
    integrated in absolute value against the smoothed density of the confidences."""
    conf, hit = validated(confidence, correct)
    value, bandwidth = relplot_modules().metrics.smECE(conf, hit, return_width=True)
    return float(value), float(bandwidth)


def smooth_reliability_curve(confidence, correct, bandwidth: float, n_points: int = 101) -> pd.DataFrame:
    """The smooth reliability curve of smECE at `bandwidth` on n_points confidences 0, ..., 1 (column x):
    y, the kernel-smoothed accuracy (Nadaraya-Watson with relplot's ReflectedGaussianKernel, the kernel of
    relplot.smECE and relplot.prepare_rel_diagram under relplot's default config), and density, the kernel
    density of the confidences. Where the density is near 0, relplot's regulariser pulls y towards 0:
    draw y weighted by density, as relplot does."""
    conf, hit = validated(confidence, correct)
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth!r}")
    grid = np.linspace(0.0, 1.0, n_points)
    kernel = relplot_modules().kernels.ReflectedGaussianKernel(bandwidth)
    accuracy, _ = kernel.smooth(conf, hit, grid)
    return pd.DataFrame({"x": grid, "y": accuracy, "density": kernel.kde(conf, grid)})


def negative_log_likelihood(confidence, correct) -> float:
    """Binary NLL of correctness: -mean(y log p + (1 - y) log(1 - p)), p the confidence clipped to
    [eps, 1 - eps] with eps the float64 machine epsilon (as sklearn.metrics.log_loss)."""
    conf, hit = validated(confidence, correct)
    eps = np.finfo(np.float64).eps
    p = np.clip(conf, eps, 1.0 - eps)
    return float(-np.mean(hit * np.log(p) + (1.0 - hit) * np.log1p(-p)))


def expected_errors(confidence, correct) -> np.ndarray:
    """Expected number of wrong rows among the i most confident rows, i = 1..N, over the orders of ties.

    Within a group of m tied rows holding e wrong ones, the first j of the group hold j e / m wrong rows
    in expectation over the group's orders."""
    conf, hit = validated(confidence, correct)
    order = np.argsort(-conf, kind="stable")
    ranked, wrong = conf[order], 1.0 - hit[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    sizes = np.diff(np.r_[starts, len(ranked)])
    group_wrong = np.add.reduceat(wrong, starts)
    group = np.repeat(np.arange(len(starts)), sizes)
    within = np.arange(len(ranked)) - starts[group] + 1
    return (np.cumsum(group_wrong) - group_wrong)[group] + within * (group_wrong / sizes)[group]


def area_under_risk_coverage(confidence, correct, expected=None) -> tuple[float, float]:
    """AURC and E-AURC (Geifman et al. 2019). AURC: the mean over i = 1..N of the risk (error rate) of the
    i most confident rows, ties in expectation over their order (`expected`: expected_errors of these rows,
    where the caller has it); E-AURC: AURC minus the AURC of the oracle order (every right row before every
    wrong one)."""
    conf, hit = validated(confidence, correct)
    expected = expected_errors(conf, hit) if expected is None else expected
    answered = np.arange(1, len(hit) + 1)
    aurc = np.mean(expected / answered)
    oracle = np.mean(np.maximum(answered - hit.sum(), 0.0) / answered)
    return float(aurc), float(aurc - oracle)


def accuracy_at_coverage(confidence, correct, coverage: float, expected=None) -> float:
    """Accuracy of the ceil(coverage N) most confident rows, ties in expectation over their order
    (`expected`: expected_errors of these rows, where the caller has it)."""
    conf, hit = validated(confidence, correct)
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be within (0, 1], got {coverage!r}")
    expected = expected_errors(conf, hit) if expected is None else expected
    rows = max(1, math.ceil(round(coverage * len(expected), 9)))  # round: 0.8 * 15 is 12.000000000000002
    return float(1.0 - expected[rows - 1] / rows)


def risk_coverage_curve(confidence, correct, n_points: int = 101) -> pd.DataFrame:
    """Risk (y) of the most confident rows against their coverage (x = rows / N), ties in expectation as
    in area_under_risk_coverage, at the most confident row and at ceil(j N / (n_points - 1)) rows for
    j = 1..n_points - 1 (every row count when N < n_points; at most n_points points)."""
    conf, hit = validated(confidence, correct)
    n = len(conf)
    rows = np.unique(np.r_[1, -(-np.arange(1, n_points) * n // (n_points - 1))])
    return pd.DataFrame({"x": rows / n, "y": expected_errors(conf, hit)[rows - 1] / rows})


def brier_score(confidence, correct) -> float:
    """Top-label (binary) Brier score: mean squared difference between confidence and correctness (0/1)."""
    conf, hit = validated(confidence, correct)
    return float(np.mean((conf - hit) ** 2))


def option_matrix(option_probs, gold) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated option probabilities, zero-padded to (items, most options), each item's number of options
    and the gold option index of each item; or ValueError."""
    rows = [np.asarray(p, dtype=np.float64) for p in option_probs]
    labels = np.asarray(gold)
    if labels.ndim != 1 or len(rows) != len(labels):
        raise ValueError(f"option_probs and gold differ in length: {len(rows)} vs {labels.size}")
    if not rows:
        raise ValueError("no items: option_probs and gold are empty")
    odd = [i for i, p in enumerate(rows) if p.ndim != 1 or len(p) < 1]
    if odd:
        raise ValueError(f"option_probs must hold a non-empty list per item: {len(odd)} of {len(rows)} items do "
                         f"not (e.g. shape {rows[odd[0]].shape} at position {odd[0]})")
    lengths = np.array([len(p) for p in rows])
    probs = np.zeros((len(rows), lengths.max()))
    for i, p in enumerate(rows):
        probs[i, :len(p)] = p
    bad = ~(np.isfinite(probs) & (probs >= 0.0) & (probs <= 1.0)).all(axis=1)
    bad |= ~np.isclose(probs.sum(axis=1), 1.0, rtol=0.0, atol=1e-6)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"option_probs must be probabilities within [0, 1] summing to 1: {int(bad.sum())} of "
                         f"{len(rows)} items are not (e.g. {rows[first].tolist()} at position {first})")
    indices, invalid = option_indices(labels, lengths)
    if invalid.any():
        first = int(np.flatnonzero(invalid)[0])
        raise ValueError(f"gold must be an option index within [0, {lengths[first]}) (its item's number of "
                         f"options): {int(invalid.sum())} of {len(rows)} values are not "
                         f"(e.g. {labels[first:first + 1].tolist()[0]!r} at position {first})")
    return probs, lengths, indices


def multiclass_brier_score(option_probs, gold) -> float:
    """Brier score over all options: mean over items of sum_k (p_k - 1[k == gold])^2, within [0, 2].

    `option_probs` holds one probability vector per item (each summing to 1; items may differ in their
    number of options), `gold` the index of the right option of each item.
    """
    probs, _, indices = option_matrix(option_probs, gold)
    truth = np.zeros_like(probs)  # a padded option adds (0 - 0)^2
    truth[np.arange(len(probs)), indices] = 1.0
    return float(np.mean(np.sum((probs - truth) ** 2, axis=1)))


def static_calibration_error(option_probs, gold, n_bins: int = 10) -> float:
    """SCE (Nixon et al. 2019): the mean over option positions k of the equal-width ECE of p_k against
    1[gold == k], each over the items that have an option k (an item with fewer options is in the ECE of
    the positions it has only: ECE_k = sum over bins of |number gold - sum of p_k| / items with option k)."""
    check_n_bins(n_bins)
    probs, lengths, indices = option_matrix(option_probs, gold)
    n_classes = probs.shape[1]
    has = np.arange(n_classes)[None, :] < lengths[:, None]
    truth = (np.arange(n_classes)[None, :] == indices[:, None]).astype(np.float64)
    key = (np.arange(n_classes)[None, :] * n_bins + width_bin_index(probs, n_bins))[has]
    gaps = np.bincount(key, weights=(truth - probs)[has], minlength=n_classes * n_bins)
    per_class = np.abs(gaps.reshape(n_classes, n_bins)).sum(axis=1) / has.sum(axis=0)
    return float(per_class.mean())


def mean_letter_mass(letter_mass) -> float:
    """Mean over the rows that have one (NaN elsewhere) of the probability the model puts on the option
    letters at the answer position, out of its whole vocabulary; NaN when no row has one."""
    mass = np.asarray(letter_mass, dtype=np.float64)
    mass = mass[~np.isnan(mass)]
    if len(mass) == 0:
        return float("nan")
    bad = ~(np.isfinite(mass) & (mass >= 0.0) & (mass <= 1.0 + 1e-6))
    if bad.any():
        raise ValueError(f"letter_mass must be a probability within [0, 1]: {int(bad.sum())} of {len(mass)} "
                         f"values are not (e.g. {mass[bad][0].item()!r})")
    return float(mass.mean())


def auroc(confidence, correct) -> float:
    """Area under the ROC curve of confidence separating correct from wrong items (ties count half).

    Computed as the Mann-Whitney statistic from mid-ranks; NaN when only one class is present.
    """
    conf, hit = validated(confidence, correct)
    n_pos = int(hit.sum())
    n_neg = len(hit) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(conf, return_inverse=True, return_counts=True)
    # Mid-rank (1-based) of each distinct value: ranks below it plus the average rank within its ties.
    mid_rank = np.cumsum(counts) - (counts - 1) / 2.0
    pos_rank_sum = mid_rank[inverse][hit == 1.0].sum()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
