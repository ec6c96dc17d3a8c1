"""Calibration metrics of confidences against correctness: the "score" and "summarize" stages."""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .sources import parse_step
from .tables import atomic_path, read_provenance, read_table, write_table

KEYS = ("task", "model", "revision", "method")
METRIC_NAMES = ("n", "accuracy", "mean_confidence", "ece", "mce", "ace", "brier", "brier_multiclass", "letter_mass",
                "auroc", "ece_ci_low", "ece_ci_high")
BIN_COLUMNS = ("bin", "bin_lower", "bin_upper", "count", "mean_confidence", "accuracy")
INPUT_COLUMNS = ("item_id", "method", "confidence", "correct")
STRATA_COLUMNS = ("subject", "relation")  # the bootstrap stratifies by the first of these a method's rows fill
MODEL_INFO = ("params", "step", "epoch")  # integer columns every summary row has (empty where unknown)

# Cells of the bootstrap (one per stratum, bin and correctness) holding at most this many rows are resampled
# row by row; larger ones take the normal limit of their resampled confidence sum (see bootstrap_ece_interval).
_EXACT_CELL_SIZE = 2000
# Unit counts the bootstrap over units of several rows holds at once (resamples x units; 32 MiB of float64).
_CHUNK_ELEMENTS = 2**22


def _validated(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
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


def _check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")


def _width_bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each confidence: [i/n, (i+1)/n), the last bin closed so that 1.0 counts."""
    edges = np.arange(n_bins + 1) / n_bins
    return np.minimum(np.searchsorted(edges, conf, side="right") - 1, n_bins - 1)


def _bin_totals(conf: np.ndarray, hit: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: item count, sum of confidences, number correct."""
    index = _width_bin_index(conf, n_bins)
    return (
        np.bincount(index, minlength=n_bins),
        np.bincount(index, weights=conf, minlength=n_bins),
        np.bincount(index, weights=hit, minlength=n_bins),
    )


def reliability_bins(confidence, correct, n_bins: int = 10) -> pd.DataFrame:
    """Reliability table over `n_bins` equal-width bins of [0, 1] (empty bins have NaN means)."""
    _check_n_bins(n_bins)
    conf, hit = _validated(confidence, correct)
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
    _check_n_bins(n_bins)
    conf, hit = _validated(confidence, correct)
    _, conf_sum, hit_sum = _bin_totals(conf, hit, n_bins)
    return float(np.abs(hit_sum - conf_sum).sum() / len(conf))


def maximum_calibration_error(confidence, correct, n_bins: int = 10) -> float:
    """MCE: the largest |accuracy - mean confidence| over the non-empty equal-width bins."""
    _check_n_bins(n_bins)
    conf, hit = _validated(confidence, correct)
    count, conf_sum, hit_sum = _bin_totals(conf, hit, n_bins)
    full = count > 0
    return float(np.max(np.abs(hit_sum[full] - conf_sum[full]) / count[full]))


def adaptive_calibration_error(confidence, correct, n_bins: int = 10) -> float:
    """ECE over equal-mass bins, as HELM's `ece_10_bin` (`calibration.get_ece_em` of Kumar et al.).

    The sorted confidences are split into min(n_bins, N) near-equal parts (np.array_split); a bin edge
    lies midway between the last value of a part and the first of the next, plus an edge at 1.0;
    duplicate edges collapse (ties can merge bins). An item goes to the first edge >= its confidence.
    """
    _check_n_bins(n_bins)
    conf, hit = _validated(confidence, correct)
    ordered = np.sort(conf)
    parts = min(n_bins, len(ordered))
    # np.array_split gives the first N % parts parts one extra item.
    quotient, remainder = divmod(len(ordered), parts)
    part_ends = np.cumsum([quotient + 1] * remainder + [quotient] * (parts - remainder))[:-1]
    midpoints = (ordered[part_ends - 1] + ordered[part_ends]) / 2.0
    edges = np.unique(np.append(midpoints, 1.0))
    index = np.searchsorted(edges, conf, side="left")
    conf_sum = np.bincount(index, weights=conf, minlength=len(edges))
    hit_sum = np.bincount(index, weights=hit, minlength=len(edges))
    return float(np.abs(hit_sum - conf_sum).sum() / len(conf))


def brier_score(confidence, correct) -> float:
    """Top-label (binary) Brier score: mean squared difference between confidence and correctness (0/1)."""
    conf, hit = _validated(confidence, correct)
    return float(np.mean((conf - hit) ** 2))


def multiclass_brier_score(option_probs, gold) -> float:
    """Brier score over all options: mean over items of sum_k (p_k - 1[k == gold])^2, within [0, 2].

    `option_probs` holds one probability vector per item (each summing to 1; items may differ in their
    number of options), `gold` the index of the right option of each item.
    """
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
    probs = np.zeros((len(rows), lengths.max()))  # padded with zeros: a missing option adds (0 - 0)^2
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
    truth = np.zeros_like(probs)
    truth[np.arange(len(rows)), indices] = 1.0
    return float(np.mean(np.sum((probs - truth) ** 2, axis=1)))


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
    conf, hit = _validated(confidence, correct)
    n_pos = int(hit.sum())
    n_neg = len(hit) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(conf, return_inverse=True, return_counts=True)
    # Mid-rank (1-based) of each distinct value: ranks below it plus the average rank within its ties.
    mid_rank = np.cumsum(counts) - (counts - 1) / 2.0
    pos_rank_sum = mid_rank[inverse][hit == 1.0].sum()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _codes(values, name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
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


def _row_bootstrap_eces(conf, hit, bins, stratum, n_bins: int, n_bootstrap: int, rng) -> np.ndarray:
    """ECEs of resamples drawing every stratum's rows with replacement, by (stratum, bin, correct) cell."""
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
            if stratum_sizes[c] <= _EXACT_CELL_SIZE:
                picks = values[rng.integers(0, stratum_sizes[c], m.sum())]
                conf_sums = np.bincount(np.repeat(np.arange(n_bootstrap), m), weights=picks, minlength=n_bootstrap)
            else:
                conf_sums = m * values.mean() + np.sqrt(m * values.var()) * rng.standard_normal(n_bootstrap)
            gaps[:, c // 2] += (c % 2) * m - conf_sums
    return np.abs(gaps).sum(axis=1) / len(conf)


def _unit_bootstrap_eces(conf, hit, bins, unit, unit_stratum, n_bins: int, n_bootstrap: int, rng) -> np.ndarray:
    """ECEs of resamples drawing every stratum's units with replacement, from per-unit bin gaps and sizes."""
    n_units = len(unit_stratum)
    unit_gaps = np.bincount(unit * n_bins + bins, weights=hit - conf, minlength=n_units * n_bins)
    unit_gaps = unit_gaps.reshape(n_units, n_bins)  # per unit and bin: number correct - confidence sum
    unit_rows = np.bincount(unit, minlength=n_units).astype(np.float64)
    members = [np.flatnonzero(unit_stratum == s) for s in range(unit_stratum.max() + 1)]
    chunk = max(1, _CHUNK_ELEMENTS // n_units)
    eces = np.empty(n_bootstrap)
    for start in range(0, n_bootstrap, chunk):
        size = min(chunk, n_bootstrap - start)
        counts = np.empty((size, n_units))  # times each unit is drawn, per resample
        for units in members:
            counts[:, units] = rng.multinomial(len(units), np.full(len(units), 1.0 / len(units)), size=size)
        eces[start:start + size] = np.abs(counts @ unit_gaps).sum(axis=1) / (counts @ unit_rows)
    return eces


def bootstrap_ece_interval(
    confidence, correct, n_bins: int = 10, n_bootstrap: int = 1000, level: float = 0.95, seed: int = 0,
    units=None, strata=None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the ECE, resampling independent units with replacement.

    Rows sharing a label of `units` form one unit (a CLM document's tokens; default: every row its own
    unit). With `strata` (a label per row, one per unit), every stratum's units are resampled separately,
    as many as it has. A resample's ECE counts every row drawn, over all of them.

    When every unit is one row, a resample's ECE depends only on, per (stratum, bin, correct) cell, how
    many rows were drawn from it and the sum of their confidences. The cell counts are drawn exactly
    (multinomial over a stratum's cells, the same as drawing its rows uniformly). Within a cell, the
    confidences are drawn row by row when the cell holds at most `_EXACT_CELL_SIZE` rows; for a larger
    cell the sum of its m drawn confidences is taken from its normal limit, with the exact mean m*mean
    and variance m*var of that sum. Such a sum adds over 2000 bounded draws (CLT) and varies far less
    than the counts do (the confidences of a bin span at most 1/n_bins), so the interval is unchanged in
    practice, while 1e6 rows x 1000 resamples take a fraction of a second instead of tens of seconds.
    Otherwise each unit is reduced to its row count and per-bin (number correct - confidence sum); a
    resample is a multinomial count per unit, and resamples are processed `_CHUNK_ELEMENTS` counts at a time.
    """
    _check_n_bins(n_bins)
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be within (0, 1), got {level}")
    conf, hit = _validated(confidence, correct)
    n = len(conf)
    unit, unit_labels = (np.arange(n), None) if units is None else _codes(units, "units", n)
    stratum, stratum_labels = (np.zeros(n, dtype=np.intp), None) if strata is None else _codes(strata, "strata", n)
    unit_stratum = np.zeros(unit.max() + 1, dtype=np.intp)
    unit_stratum[unit] = stratum
    split = np.flatnonzero(unit_stratum[unit] != stratum)
    if len(split):
        row = split[0]
        raise ValueError(f"a unit must lie in one stratum: unit {unit_labels[unit[row]]!r} has rows in strata "
                         f"{stratum_labels[stratum[row]]!r} and {stratum_labels[unit_stratum[unit[row]]]!r}")
    rng = np.random.default_rng(seed)
    bins = _width_bin_index(conf, n_bins)
    if len(unit_stratum) == n:
        eces = _row_bootstrap_eces(conf, hit, bins, stratum, n_bins, n_bootstrap, rng)
    else:
        eces = _unit_bootstrap_eces(conf, hit, bins, unit, unit_stratum, n_bins, n_bootstrap, rng)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(eces, [tail, 1.0 - tail])
    return float(low), float(high)


def calibration_metrics(
    confidence, correct, n_bins: int = 10, n_bootstrap: int = 1000, seed: int = 0, *,
    units=None, strata=None, option_probs=None, gold=None, letter_mass=None,
) -> dict:
    """All metrics of one set of rows, keyed as METRIC_NAMES.

    `units` and `strata` shape the bootstrap (bootstrap_ece_interval); no interval (NaN) when
    n_bootstrap == 0. brier_multiclass needs `option_probs` and `gold` (NaN without them); letter_mass is
    the mean of `letter_mass` (mean_letter_mass; NaN without it).
    """
    conf, hit = _validated(confidence, correct)
    if (option_probs is None) != (gold is None):
        raise ValueError("option_probs and gold come together: give both or neither")
    if option_probs is None:
        brier_multiclass = float("nan")
    elif len(option_probs) != len(conf):
        raise ValueError(f"option_probs and confidence differ in length: {len(option_probs)} vs {len(conf)}")
    else:
        brier_multiclass = multiclass_brier_score(option_probs, gold)
    if letter_mass is not None and len(letter_mass) != len(conf):
        raise ValueError(f"letter_mass and confidence differ in length: {len(letter_mass)} vs {len(conf)}")
    mass = float("nan") if letter_mass is None else mean_letter_mass(letter_mass)
    if n_bootstrap:
        ci_low, ci_high = bootstrap_ece_interval(conf, hit, n_bins, n_bootstrap, seed=seed, units=units,
                                                 strata=strata)
    else:
        ci_low = ci_high = float("nan")
    return {
        "n": len(conf),
        "accuracy": float(hit.mean()),
        "mean_confidence": float(conf.mean()),
        "ece": expected_calibration_error(conf, hit, n_bins),
        "mce": maximum_calibration_error(conf, hit, n_bins),
        "ace": adaptive_calibration_error(conf, hit, n_bins),
        "brier": brier_score(conf, hit),
        "brier_multiclass": brier_multiclass,
        "letter_mass": mass,
        "auroc": auroc(conf, hit),
        "ece_ci_low": ci_low,
        "ece_ci_high": ci_high,
    }


def _filled(group: pd.DataFrame, column: str) -> pd.Series | None:
    """`column` of a method's rows, or None where the table lacks it or it is empty for that method."""
    return group[column] if column in group and group[column].notna().any() else None


def score(
    confidence_path: str | os.PathLike,
    summary_out: str | os.PathLike,
    bins_out: str | os.PathLike,
    *,
    task: str,
    model: str,
    revision: str,
    n_bins: int = 10,
    n_bootstrap: int = 1000,
    seed: int = 0,
    labels: Mapping[str, str | int | float] | None = None,
) -> None:
    """Score every method of one confidence table: a summary row and reliability bins per method.

    The ECE interval resamples the rows of an item_id together, stratified by the first of
    STRATA_COLUMNS the method fills; brier_multiclass needs the columns option_probs and gold, letter_mass
    the column letter_mass (both NaN for a method whose rows leave them empty).
    """
    labels = dict(labels or {})
    clashes = sorted(set(labels) & {*KEYS, *METRIC_NAMES, *MODEL_INFO})
    if clashes:
        raise ValueError(f"labels may not reuse the column names {clashes}")
    table = read_table(confidence_path)
    missing = [column for column in INPUT_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"{confidence_path}: missing columns {missing}")
    if table.empty:
        raise ValueError(f"{confidence_path}: no rows to score")
    if table["method"].isna().any():
        raise ValueError(f"{confidence_path}: {int(table['method'].isna().sum())} rows have no method")

    keys = {"task": task, "model": model, "revision": revision}
    source = read_provenance(confidence_path)
    # params is counted from the loaded model by the inference stage; step and epoch come from the revision name.
    model_info = {"params": source.get("inference", {}).get("params"), "step": parse_step(revision),
                  "epoch": parse_epoch(revision)}
    summary_rows, bin_tables = [], []
    for method, group in table.groupby("method", sort=True):
        strata = next((group[column] for column in STRATA_COLUMNS if _filled(group, column) is not None), None)
        try:
            metrics = calibration_metrics(group["confidence"], group["correct"], n_bins, n_bootstrap, seed,
                                          units=group["item_id"], strata=strata,
                                          option_probs=_filled(group, "option_probs"), gold=_filled(group, "gold"),
                                          letter_mass=_filled(group, "letter_mass"))
            bins = reliability_bins(group["confidence"], group["correct"], n_bins)
        except ValueError as error:
            raise ValueError(f"{confidence_path}, method {method!r}: {error}") from error
        summary_rows.append({**keys, "method": method, **metrics, **model_info, **labels})
        bin_tables.append(bins.assign(**keys, method=method))

    provenance = {
        "stage": "score", **keys, "n_bins": n_bins, "n_bootstrap": n_bootstrap, "seed": seed,
        "input": source,
    }
    summary = pd.DataFrame(summary_rows).astype({column: "Int64" for column in MODEL_INFO})
    write_table(summary, summary_out, provenance)
    write_table(pd.concat(bin_tables, ignore_index=True)[[*KEYS, *BIN_COLUMNS]], bins_out, provenance)


def parse_epoch(revision: str) -> int | None:
    """The training epoch a revision of an aligned model names (``epoch2`` -> 2), else None."""
    match = re.fullmatch(r"epoch(\d+)", revision)
    return int(match.group(1)) if match else None


def _concatenated(paths: Sequence[str | os.PathLike], order: list[str]) -> pd.DataFrame:
    if not paths:
        raise ValueError("no tables to summarize")
    frames = [read_table(path) for path in paths]
    return pd.concat(frames, ignore_index=True, sort=False).sort_values(order, kind="stable", ignore_index=True)


def _text_if_mixed(summary: pd.DataFrame) -> pd.DataFrame:
    """Label columns holding both numbers and text across runs (e.g. params 1e9 and "160M") become text."""
    for column in summary.columns.difference([*KEYS, *METRIC_NAMES, *MODEL_INFO]):
        if summary[column].dtype == object:
            summary[column] = summary[column].map(lambda value: value if pd.isna(value) else str(value))
    return summary


def summarize(
    summary_paths: Sequence[str | os.PathLike],
    bins_paths: Sequence[str | os.PathLike],
    summary_parquet: str | os.PathLike,
    summary_csv: str | os.PathLike,
    reliability_parquet: str | os.PathLike,
) -> None:
    """Gather the per-run summaries and reliability bins into one summary (Parquet and CSV) and one bins table.

    Label columns are the union over runs; a run without a label has it empty.
    """
    summary = _text_if_mixed(_concatenated(summary_paths, list(KEYS)))
    reliability = _concatenated(bins_paths, [*KEYS, "bin"])
    write_table(summary, summary_parquet, {
        "stage": "summarize", "inputs": {str(path): read_provenance(path) for path in summary_paths},
    })
    with atomic_path(summary_csv, suffix=".csv") as tmp:
        summary.to_csv(tmp, index=False)
    write_table(reliability, reliability_parquet, {
        "stage": "summarize", "inputs": {str(path): read_provenance(path) for path in bins_paths},
    })
