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
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.stats

from .bootstrap import group_codes, resample_counts, stratum_of_units
from .metric_table import METRICS, STRATA_COLUMNS, ScoredRows, strata_of
from .metrics import check_n_bins, unparsed_rows
from .scoring import each_group_rows, group_rows, recalibrated_groups
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
_SIDE_COLUMNS = ("item_id", "confidence", "correct", *STRATA_COLUMNS, "option_probs", "gold")  # side_statistics reads
_READ_COLUMNS = (*_SIDE_COLUMNS, "parsed")  # what compare reads of a recalibrated table's group


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


def _difference(a: _Compared, b: _Compared) -> dict:
    """The metric columns (all but q) of b - a: point difference, percentile interval and p of the resamples."""
    tail = (1.0 - LEVEL) / 2.0
    columns = {}
    for metric in COMPARED_METRICS:
        columns[f"{metric}_a"], columns[f"{metric}_b"] = a.point[metric], b.point[metric]
        columns[f"{metric}_diff"] = b.point[metric] - a.point[metric]
        low = high = p = float("nan")
        if a.values is not None:
            d = b.values[metric] - a.values[metric]
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


class _Compared(NamedTuple):
    """What a comparison reads of a side: its units and their strata, the full-sample value of every compared
    metric, and their values on the resamples (None without resamples)."""

    units: np.ndarray
    unit_strata: np.ndarray
    point: dict[str, float]
    values: dict[str, np.ndarray] | None


class _Resamples:
    """The resample counts that every side of one design (its units and their strata) shares, drawn by
    resample_counts(seed). Only the last design's are kept: a design asked for again is drawn again, the same."""

    def __init__(self, n_bootstrap: int, seed: int):
        self.n_bootstrap, self.seed = n_bootstrap, seed
        self.design, self.counts = None, None

    def reduce(self, side: Side) -> _Compared:
        """What comparisons read of `side`, its metrics on the resamples of its design."""
        values = None
        if self.n_bootstrap:
            design = (tuple(side.units), tuple(side.unit_strata))
            if design != self.design:
                codes, _ = pd.factorize(side.unit_strata, use_na_sentinel=False)
                self.design, self.counts = design, resample_counts(codes, self.n_bootstrap, self.seed)
            values = side.resampled(self.counts)
        return _Compared(side.units, side.unit_strata, side.point, values)


def _task_comparisons(task: str, task_runs: Mapping, model_pairs: Sequence, n_bins: int, n_bootstrap: int,
                      seed: int) -> list[dict]:
    """The comparison rows of one task (all but the q columns): the model pairs whose runs the task has,
    then every run's "none" against its other recalibrations, per method.

    Memory holds one (method, recalibration) group of one run's rows at a time (two where a comparison leaves
    out unparsed replies; a table of at most scoring.BATCH_ROWS rows whole), never the runs' tables: the runs are
    visited in the order of `task_runs`, each group that a comparison needs is read once, when its run is
    reached, and reduced to what the comparisons read of it (_Compared: a value per metric and resample), kept
    until the last comparison that needs it. A comparison is made when the later of its runs is reached; the
    rows come in the order described above."""
    position = {key: i for i, key in enumerate(task_runs)}
    groups, unparsed = {}, set()  # groups: those with rows to compare; unparsed: those that left rows out
    for key, path in task_runs.items():
        sizes = recalibrated_groups(path)
        groups[key] = {group for group, (n, left_out) in sizes.items() if n > left_out}
        unparsed |= {(key, *group) for group, (_, left_out) in sizes.items() if left_out}
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

    # The sides of a comparison: (run, method, recalibration) each. Where a side left out unparsed replies, both
    # are scored on the items both have a confidence for: such a comparison reads its two groups for itself.
    sides = [((a, method, rec_a), (b, method, rec_b)) for _, method, a, rec_a, b, rec_b in comparisons]
    on_common_items = [side_a in unparsed or side_b in unparsed for side_a, side_b in sides]
    at_step = defaultdict(list)  # step (the position of a run) -> the comparisons made once that run is reached
    last_step = {}  # every side the other comparisons read -> the step of the last of them
    for c, pair_sides in enumerate(sides):
        now = max(position[side[0]] for side in pair_sides)
        at_step[now].append(c)
        for side in () if on_common_items[c] else pair_sides:
            last_step[side] = max(last_step.get(side, now), now)
    resamples = _Resamples(n_bootstrap, seed)

    def compared(side, rows) -> _Compared:
        try:
            statistics = side_statistics(rows, n_bins)
        except ValueError as error:
            raise ValueError(f"{task_runs[side[0]]}, method {side[1]!r}, recalibration {side[2]!r}: "
                             f"{error}") from error
        return resamples.reduce(statistics)

    def common_items(side_a, side_b) -> tuple[_Compared, _Compared]:
        rows_a, rows_b = (_side_rows(group_rows(task_runs[side[0]], *side[1:], _READ_COLUMNS))
                          for side in (side_a, side_b))
        items = frozenset(rows_a["item_id"]) & frozenset(rows_b["item_id"])
        return (compared(side_a, rows_a[rows_a["item_id"].isin(items)]),
                compared(side_b, rows_b[rows_b["item_id"].isin(items)]))

    kept: dict[tuple, _Compared] = {}
    rows: list[dict] = [{}] * len(comparisons)
    for now, (key, path) in enumerate(task_runs.items()):
        reached = sorted(side for side in last_step if side[0] == key)
        for side, group in zip(reached, each_group_rows(path, [side[1:] for side in reached], _READ_COLUMNS)):
            kept[side] = compared(side, _side_rows(group))
            del group  # before the next group is read
        for c in at_step[now]:
            a, b = common_items(*sides[c]) if on_common_items[c] else (kept[side] for side in sides[c])
            rows[c] = _comparison_row(comparisons[c], task, a, b)
        for side in [side for side in kept if last_step[side] == now]:
            del kept[side]
    log.info("task %s: %d comparisons%s", task, len(rows),
             f" ({skipped} model pairs skipped: a run is missing)" if skipped else "")
    return rows


def _comparison_row(comparison: tuple, task: str, a: _Compared, b: _Compared) -> dict:
    """The row of one comparison (all but the q columns) from its two sides, which must hold the same units."""
    label, method, run_a, rec_a, run_b, rec_b = comparison
    names = f"{run_a[0]} {run_a[1]} ({rec_a}) and {run_b[0]} {run_b[1]} ({rec_b}), task {task!r}, method {method!r}"
    if not np.array_equal(a.units, b.units):
        only_a = np.setdiff1d(a.units, b.units)
        only_b = np.setdiff1d(b.units, a.units)
        raise ValueError(f"runs {names} hold different item_ids ({len(only_a)} only in the first, e.g. "
                         f"{only_a[:3].tolist()}; {len(only_b)} only in the second, e.g. "
                         f"{only_b[:3].tolist()}): a paired comparison needs the same items")
    if not np.array_equal(a.unit_strata, b.unit_strata):
        raise ValueError(f"runs {names} put the same item_ids in different strata (subject/relation)")
    return {"comparison": label, "task": task, "method": method,
            "model_a": run_a[0], "revision_a": run_a[1], "recalibration_a": rec_a,
            "model_b": run_b[0], "revision_b": run_b[1], "recalibration_b": rec_b,
            "n": len(a.units), **_difference(a, b)}


def _side_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of a group (read with _READ_COLUMNS) that have a confidence (metrics.unparsed_rows), with the
    columns side_statistics reads."""
    return rows.loc[~unparsed_rows(rows), [c for c in _SIDE_COLUMNS if c in rows.columns]].reset_index(drop=True)
