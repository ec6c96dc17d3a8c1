"""Paired bootstrap comparisons between runs scored on the same items: the "compare" stage.

A comparison holds two sides, each the rows of one run, confidence method and recalibration. Both
sides are resampled with the same resamples of their items (units), so a difference between them
carries only the sampling noise of the difference. Every metric of a resample is computed from
per-unit aggregates: a matrix of how often each unit is drawn (resamples x units) times per-unit
sums, never by materialising the resampled rows.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats

from .bootstrap import group_codes, resample_counts, stratum_of_units
from .metric_table import METRICS, RECALIBRATED_COLUMNS, STRATA_COLUMNS, ScoredRows, read_recalibrated, strata_of
from .metrics import check_n_bins, unparsed_rows
from .tables import atomic_path

log = logging.getLogger(__name__)

# The metrics compared: those of the metrics table that have a resampled form, in name order.
COMPARED_METRICS = tuple(sorted(name for name, metric in METRICS.items() if metric.resampled is not None))
STATISTICS = ("a", "b", "diff", "ci_low", "ci_high", "p", "q")
ID_COLUMNS = ("comparison", "task", "method", "model_a", "revision_a", "recalibration_a",
              "model_b", "revision_b", "recalibration_b", "n")
COLUMNS = (*ID_COLUMNS, *(f"{metric}_{statistic}" for metric in COMPARED_METRICS for statistic in STATISTICS))
RECALIBRATION = "recalibration"  # the comparison label of "none" against a recalibration of the same run
UNCALIBRATED = "none"
LEVEL = 0.95
_OPTIONAL_COLUMNS = (*STRATA_COLUMNS, "option_probs", "gold")


@dataclass
class Side:
    """One side of comparisons: its units (sorted item ids) and their strata, its rows, the full-sample value
    of every compared metric, and the resampled forms that give their values on resamples of the units."""

    units: np.ndarray          # sorted unique item_ids
    unit_strata: np.ndarray    # stratum label of each unit (all None without strata)
    rows: ScoredRows
    point: dict[str, float]    # metric -> full-sample value
    resamplers: dict[str, Callable[[np.ndarray], np.ndarray]]  # metric -> its values on resample counts

    def resampled(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        """Each compared metric of every resample, for `counts` (resamples x units, as resample_counts)."""
        return {metric: values(counts) for metric, values in self.resamplers.items()}


def side_statistics(rows: pd.DataFrame, n_bins: int = 10) -> Side:
    """The Side of one run, method and recalibration from its rows (columns item_id, confidence, correct,
    optionally subject/relation, option_probs and gold).

    Rows sharing an item_id form one unit; units are stratified by the first of STRATA_COLUMNS the rows
    fill. SCE needs option_probs and gold on every row (NaN when no row has option_probs). smECE's
    resamples hold the full sample's bandwidth.
    """
    check_n_bins(n_bins)
    probs = rows["option_probs"] if "option_probs" in rows else None
    if probs is not None and probs.isna().all():
        probs = None
    if probs is not None:
        missing = probs.isna() | (rows["gold"].isna() if "gold" in rows else True)
        if missing.any():
            raise ValueError(f"SCE needs option_probs and gold on every row: {int(missing.sum())} of {len(rows)} "
                             f"rows lack them (e.g. item_id {rows['item_id'][missing].iloc[0]!r})")
    scored = ScoredRows(rows["confidence"], rows["correct"], n_bins, option_probs=probs,
                        gold=None if probs is None else rows["gold"], units=rows["item_id"])
    unit, units = scored.unit_index
    strata = strata_of(rows)
    unit_strata = np.full(len(units), None, dtype=object)
    if strata is not None:
        stratum, labels = group_codes(strata, "strata", len(rows))
        of_unit, row = stratum_of_units(unit, stratum)
        if row is not None:
            raise ValueError(f"a unit must lie in one stratum: item_id {units[unit[row]]!r} has rows in "
                             f"{strata.name} {labels[stratum[row]]!r} and {labels[of_unit[unit[row]]]!r}")
        unit_strata = np.asarray(labels, dtype=object)[of_unit]
    return Side(units=np.asarray(units, dtype=object), unit_strata=unit_strata, rows=scored,
                point={metric: METRICS[metric].value(scored) for metric in COMPARED_METRICS},
                resamplers={metric: METRICS[metric].resampled(scored) for metric in COMPARED_METRICS})


def bootstrap_p_value(differences) -> float:
    """Two-sided bootstrap p-value of a difference being 0, from its B resampled values d* (NaN ones left out):
    p = min(1, 2 * min((1 + #{d* <= 0}) / (B + 1), (1 + #{d* >= 0}) / (B + 1))); NaN when none is finite."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return float("nan")
    tail = min(1 + np.count_nonzero(d <= 0), 1 + np.count_nonzero(d >= 0)) / (len(d) + 1)
    return float(min(1.0, 2.0 * tail))


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted q-values (scipy.stats.false_discovery_control) over the finite p-values;
    NaN where p is NaN."""
    p = np.asarray(p_values, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        q[finite] = scipy.stats.false_discovery_control(p[finite], method="bh")
    return q


def _difference(a: Side, b: Side, a_values: dict | None, b_values: dict | None) -> dict:
    """The metric columns (all but q) of b - a: point difference, percentile interval and p of the resamples."""
    tail = (1.0 - LEVEL) / 2.0
    columns = {}
    for metric in COMPARED_METRICS:
        columns[f"{metric}_a"], columns[f"{metric}_b"] = a.point[metric], b.point[metric]
        columns[f"{metric}_diff"] = b.point[metric] - a.point[metric]
        low = high = p = float("nan")
        if a_values is not None:
            d = b_values[metric] - a_values[metric]
            d = d[np.isfinite(d)]
            if len(d):
                low, high = (float(v) for v in np.quantile(d, [tail, 1.0 - tail]))
                p = bootstrap_p_value(d)
        columns[f"{metric}_ci_low"], columns[f"{metric}_ci_high"], columns[f"{metric}_p"] = low, high, p
    return columns


def _run_key(run: Mapping, what: str) -> tuple[str, str]:
    try:
        return str(run["model"]), str(run["revision"])
    except (KeyError, TypeError):
        raise ValueError(f"{what} needs a model and a revision, got {run!r}") from None


def compare(
    runs: Sequence[Mapping],
    pairs: Sequence[Mapping],
    out_csv: str | os.PathLike,
    *,
    n_bins: int,
    n_bootstrap: int,
    seed: int,
) -> None:
    """Paired bootstrap comparisons of runs, written to `out_csv` with the columns COLUMNS.

    `runs`: {task, model, revision, path} per recalibrated table. `pairs`: {comparison, a: {model,
    revision}, b: {model, revision}}, each compared on every task where both runs exist, for every method
    both have, recalibration "none" (a pair missing a run of a task is skipped there). Every run also
    compares, per method, "none" against each other recalibration (comparison "recalibration").
    Differences are b - a. `n` counts the units (item_ids) both sides hold.

    For one task and method, the resamples (units drawn with replacement, stratified as side_statistics
    says) are drawn once by resample_counts(seed) and serve every side; the sides of a comparison must
    hold the same item_ids (else ValueError). Per metric of COMPARED_METRICS: the full-sample
    values {m}_a, {m}_b, their difference, its percentile 95% interval over the resamples and the p-value
    of bootstrap_p_value, and q, Benjamini-Hochberg over the table per metric. smECE's resamples hold each
    side's full-sample bandwidth. With n_bootstrap == 0 the intervals, p and q are NaN.
    """
    check_n_bins(n_bins)
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be a non-negative integer, got {n_bootstrap!r}")
    by_task: dict[str, dict[tuple[str, str], str]] = {}
    for run in runs:
        key = _run_key(run, "a run")
        if "task" not in run or "path" not in run:
            raise ValueError(f"a run needs a task and a path, got {run!r}")
        task_runs = by_task.setdefault(str(run["task"]), {})
        if key in task_runs:
            raise ValueError(f"run {key[0]} {key[1]} appears twice for task {run['task']!r}")
        task_runs[key] = run["path"]
    model_pairs = []
    for pair in pairs:
        if not isinstance(pair, Mapping) or not {"comparison", "a", "b"} <= set(pair):
            raise ValueError(f"a pair needs a comparison, a and b, got {pair!r}")
        model_pairs.append((str(pair["comparison"]), _run_key(pair["a"], "a pair's a"),
                            _run_key(pair["b"], "a pair's b")))

    rows = []
    for task, task_runs in by_task.items():
        rows += _task_comparisons(task, task_runs, model_pairs, n_bins, n_bootstrap, seed)
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if not c.endswith("_q")])
    for metric in COMPARED_METRICS:
        table.insert(table.columns.get_loc(f"{metric}_p") + 1, f"{metric}_q",
                     benjamini_hochberg(table[f"{metric}_p"]))
    table["n"] = table["n"].astype(np.int64)
    with atomic_path(out_csv, suffix=".csv") as tmp:
        table[list(COLUMNS)].to_csv(tmp, index=False)


def _task_comparisons(task: str, task_runs: Mapping, model_pairs: Sequence, n_bins: int, n_bootstrap: int,
                      seed: int) -> list[dict]:
    """The comparison rows of one task (all but the q columns): the model pairs whose runs the task has,
    then every run's "none" against its other recalibrations, per method."""
    groups, unparsed = {}, set()  # unparsed: the (run, method, recalibration) whose table left rows out
    for key, path in task_runs.items():
        groups[key], left_out = _groups(path)
        unparsed |= {(key, *group) for group in left_out}
    comparisons = []  # (comparison, method, run a, recalibration a, run b, recalibration b)
    skipped = 0
    for comparison, a, b in model_pairs:
        if a not in groups or b not in groups:
            skipped += 1
            continue
        methods = sorted({m for m, r in groups[a] if r == UNCALIBRATED}
                         & {m for m, r in groups[b] if r == UNCALIBRATED})
        comparisons += [(comparison, m, a, UNCALIBRATED, b, UNCALIBRATED) for m in methods]
    for key, run_groups in groups.items():
        comparisons += [(RECALIBRATION, m, key, UNCALIBRATED, key, r) for m, r in sorted(run_groups)
                        if r != UNCALIBRATED and (m, UNCALIBRATED) in run_groups]
    sides: dict[tuple, tuple[Side, dict | None]] = {}
    counts: dict[tuple, np.ndarray] = {}  # per design (units and their strata): the resamples every side shares

    def side(key, method, recalibration, items=None):
        if (key, method, recalibration, items) not in sides:
            rows = groups[key][method, recalibration]
            if items is not None:
                rows = rows[rows["item_id"].isin(items)]
            try:
                statistics = side_statistics(rows, n_bins)
            except ValueError as error:
                raise ValueError(f"{task_runs[key]}, method {method!r}, recalibration {recalibration!r}: "
                                 f"{error}") from error
            values = None
            if n_bootstrap:
                design = (tuple(statistics.units), tuple(statistics.unit_strata))
                if design not in counts:
                    codes, _ = pd.factorize(statistics.unit_strata, use_na_sentinel=False)
                    counts[design] = resample_counts(codes, n_bootstrap, seed)
                values = statistics.resampled(counts[design])
            sides[key, method, recalibration, items] = statistics, values
        return sides[key, method, recalibration, items]

    rows = []
    for comparison, method, a, rec_a, b, rec_b in comparisons:
        items = None  # where a side left out unparsed replies: the items both sides have a confidence for
        if (a, method, rec_a) in unparsed or (b, method, rec_b) in unparsed:
            items = frozenset(groups[a][method, rec_a]["item_id"]) & frozenset(groups[b][method, rec_b]["item_id"])
        (side_a, values_a), (side_b, values_b) = side(a, method, rec_a, items), side(b, method, rec_b, items)
        names = f"{a[0]} {a[1]} ({rec_a}) and {b[0]} {b[1]} ({rec_b}), task {task!r}, method {method!r}"
        if not np.array_equal(side_a.units, side_b.units):
            only_a = np.setdiff1d(side_a.units, side_b.units)
            only_b = np.setdiff1d(side_b.units, side_a.units)
            raise ValueError(f"runs {names} hold different item_ids ({len(only_a)} only in the first, e.g. "
                             f"{only_a[:3].tolist()}; {len(only_b)} only in the second, e.g. "
                             f"{only_b[:3].tolist()}): a paired comparison needs the same items")
        if not np.array_equal(side_a.unit_strata, side_b.unit_strata):
            raise ValueError(f"runs {names} put the same item_ids in different strata (subject/relation)")
        rows.append({"comparison": comparison, "task": task, "method": method,
                     "model_a": a[0], "revision_a": a[1], "recalibration_a": rec_a,
                     "model_b": b[0], "revision_b": b[1], "recalibration_b": rec_b,
                     "n": len(side_a.units), **_difference(side_a, side_b, values_a, values_b)})
    log.info("task %s: %d comparisons%s", task, len(rows),
             f" ({skipped} model pairs skipped: a run is missing)" if skipped else "")
    return rows


def _groups(path) -> tuple[dict[tuple[str, str], pd.DataFrame], set[tuple[str, str]]]:
    """The rows of a recalibrated table by (method, recalibration), less the rows without a confidence
    (metrics.unparsed_rows), and the (method, recalibration) pairs that had such rows."""
    table = read_recalibrated(path)
    unparsed = unparsed_rows(table)
    left_out = {(str(m), str(r)) for m, r in table.loc[unparsed, ["method", "recalibration"]].itertuples(index=False)}
    table = table.loc[~unparsed, [c for c in (*RECALIBRATED_COLUMNS, *_OPTIONAL_COLUMNS) if c in table.columns]]
    return {(str(m), str(r)): group.reset_index(drop=True)
            for (m, r), group in table.groupby(["method", "recalibration"], sort=True)}, left_out
