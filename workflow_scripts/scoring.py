"""The score stage: every metric of the metrics table (metric_table.METRICS) per run, method and recalibration,
with reliability bins, a bin sweep, per-subject metrics and curves (summary.summarize gathers them)."""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .metric_table import (
    METRIC_NAMES,
    RECALIBRATED_COLUMNS,
    STRATA_COLUMNS,
    ScoredRows,
    filled_column,
    metric_values,
    strata_of,
)
from .metrics import (
    expected_calibration_error,
    reliability_bins,
    risk_coverage_curve,
    smooth_calibration_error,
    smooth_reliability_curve,
    unparsed_rows,
)
from .tables import read_provenance, write_table

KEYS = ("task", "model", "revision", "method", "recalibration")
# The metrics of summary and subject rows: `unparsed` counts the rows left out for want of a confidence (replies
# that verbalized confidence could not parse, column parsed false), `n` the rows scored.
METRIC_COLUMNS = ("n", "unparsed", *METRIC_NAMES[1:], "temperature")
BIN_COLUMNS = ("bin", "bin_lower", "bin_upper", "count", "mean_confidence", "accuracy")
SWEEP_BINS = (5, 10, 15, 20)  # bin counts of the ECE in the bin sweep
MODEL_INFO = ("params", "step", "epoch")  # integer columns every summary row has (empty where unknown)
GROUP_COLUMNS = ("method", "recalibration")  # what makes a group of a recalibrated table
# Rows of a recalibrated table read at once: its groups are counted a batch of this many rows at a time, and a
# table of at most this many rows is read whole and split into its groups (a larger one a group at a time).
BATCH_ROWS = 2**20
# The columns of a recalibrated table that score reads from a group's rows (those the table has).
SCORED_COLUMNS = ("item_id", "confidence", "correct", "parsed", "option_probs", "gold", "letter_mass",
                  *STRATA_COLUMNS, "temperature", "fold")


def recalibrated_groups(path: str | os.PathLike) -> dict[tuple[str, str], tuple[int, int]]:
    """The (method, recalibration) groups of a recalibrated table (results/recalibrated/...), in the order of
    their first rows, each with its number of rows and of rows without a confidence (metrics.unparsed_rows).

    Reads only the group columns (and ``parsed``); checks the table for RECALIBRATED_COLUMNS and for rows without
    a method or recalibration."""
    file = pq.ParquetFile(path)
    names = file.schema_arrow.names
    if "recalibration" not in names:
        raise ValueError(f"{path}: no column 'recalibration': score and compare read a recalibrated table "
                         f"(results/recalibrated/...), not a confidence table")
    missing = [column for column in RECALIBRATED_COLUMNS if column not in names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    # Counted a batch of rows at a time: the group columns of a CLM run (tokens x recalibrations) are never whole.
    sizes, empty = {}, dict.fromkeys(GROUP_COLUMNS, 0)  # empty: per group column, the rows without a value
    read = [*GROUP_COLUMNS, *(["parsed"] if "parsed" in names else [])]
    for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=read):
        keys = pa.Table.from_batches([batch])
        for column in GROUP_COLUMNS:
            empty[column] += keys[column].null_count
        unparsed = (pc.equal(keys["parsed"], False).fill_null(False) if "parsed" in read  # metrics.unparsed_rows
                    else pa.array(np.zeros(len(keys), dtype=bool)))
        counts = keys.append_column("unparsed", unparsed.cast(pa.int64())).group_by(
            list(GROUP_COLUMNS), use_threads=False).aggregate([("unparsed", "count"), ("unparsed", "sum")])
        for group in zip(*(counts[c].to_pylist() for c in (*GROUP_COLUMNS, "unparsed_count", "unparsed_sum"))):
            n, left_out = sizes.get(group[:2], (0, 0))
            sizes[group[:2]] = (n + group[2], left_out + group[3])
    for column in GROUP_COLUMNS:
        if empty[column]:
            raise ValueError(f"{path}: {empty[column]} rows have no {column}")
    return sizes


def group_rows(path: str | os.PathLike, method: str, recalibration: str, columns) -> pd.DataFrame:
    """The rows of one method and recalibration of a recalibrated table, in table order, with those of
    `columns` the table has, read alone (from the row groups that hold them)."""
    names = pq.read_schema(path).names
    return pd.read_parquet(path, columns=[column for column in columns if column in names],
                           filters=[("method", "==", method), ("recalibration", "==", recalibration)])


def each_group_rows(path: str | os.PathLike, groups, columns) -> Iterator[pd.DataFrame]:
    """group_rows of each of `groups` ((method, recalibration) pairs) in turn: a table of more than BATCH_ROWS
    rows is read a group at a time, never whole; a smaller one is read once and split."""
    file = pq.ParquetFile(path)
    if file.metadata.num_rows > BATCH_ROWS:
        for method, recalibration in groups:
            yield group_rows(path, method, recalibration, columns)
        return
    present = [column for column in columns if column in file.schema_arrow.names]
    table = pd.read_parquet(path, columns=list(dict.fromkeys([*GROUP_COLUMNS, *present])))
    for method, recalibration in groups:
        rows = table[(table["method"] == method) & (table["recalibration"] == recalibration)]
        yield rows[present].reset_index(drop=True)


def mean_fold_temperature(rows: pd.DataFrame) -> float:
    """The mean over folds of the temperature that scored a fold's rows (NaN when no row has one)."""
    if filled_column(rows, "temperature") is None:
        return float("nan")
    fitted = rows[rows["temperature"].notna()]
    folds = fitted["fold"] if "fold" in fitted else pd.Series(0, index=fitted.index)
    return float(fitted["temperature"].groupby(folds.to_numpy(), dropna=False).first().mean())


def _metric_row(rows: pd.DataFrame, n_bins: int, n_bootstrap: int, seed: int, strata=None, smooth=None) -> dict:
    """METRIC_COLUMNS of some rows of one (method, recalibration), of which the unparsed ones are only
    counted (all metrics NaN where no row is left); the ECE interval resamples item_ids."""
    unparsed = unparsed_rows(rows)
    if unparsed.any():
        strata = None if strata is None else strata[~unparsed]
        rows = rows[~unparsed]
    if rows.empty:
        return {**dict.fromkeys(METRIC_COLUMNS, float("nan")), "n": 0, "unparsed": int(unparsed.sum())}
    option_probs = filled_column(rows, "option_probs")  # None on top-label recalibrations (platt, isotonic, histogram)
    gold = None if option_probs is None else rows["gold"] if "gold" in rows else None
    metrics = metric_values(ScoredRows(rows["confidence"], rows["correct"], n_bins, option_probs=option_probs,
                                       gold=gold, letter_mass=filled_column(rows, "letter_mass"),
                                       units=rows["item_id"], strata=strata, n_bootstrap=n_bootstrap, seed=seed,
                                       smooth=smooth))
    return {**metrics, "unparsed": int(unparsed.sum()), "temperature": mean_fold_temperature(rows)}


def _score_group(group: pd.DataFrame, n_bins: int, n_bootstrap: int, seed: int):
    """Summary rows (micro, and macro over >= 2 subjects), subject rows, bins, bin sweep and curves of one
    (method, recalibration)."""
    scored = group[~unparsed_rows(group)]
    conf, hit = scored["confidence"], scored["correct"]
    smooth = smooth_calibration_error(conf, hit) if len(scored) else None
    strata = strata_of(group)
    summary = [{"aggregation": "micro", **_metric_row(group, n_bins, n_bootstrap, seed, strata, smooth)}]
    subjects = []
    if filled_column(group, "subject") is not None:
        subjects = [{"subject": subject, **_metric_row(rows, n_bins, 0, seed)}
                    for subject, rows in group.groupby("subject", sort=True)]
    if len(subjects) >= 2:
        # The mean over subjects of each metric, over the subjects where it is defined (e.g. AUROC needs
        # right and wrong rows); n counts every row, and the interval is the micro row's only.
        macro = pd.DataFrame(subjects)[list(METRIC_COLUMNS)].mean()
        summary.append({"aggregation": "macro", **macro.to_dict(), "n": len(scored),
                        "unparsed": len(group) - len(scored), "ece_ci_low": float("nan"), "ece_ci_high": float("nan")})
    if scored.empty:  # nothing to draw: no bins, sweep or curves
        return summary, subjects, *(pd.DataFrame(columns=columns) for columns in (
            BIN_COLUMNS, ["n_bins", "ece"], ["curve", "x", "y", "density"]))
    bins = reliability_bins(conf, hit, n_bins)
    sweep = pd.DataFrame({"n_bins": SWEEP_BINS, "ece": [expected_calibration_error(conf, hit, b) for b in SWEEP_BINS]})
    curves = pd.concat([smooth_reliability_curve(conf, hit, smooth[1]).assign(curve="smooth_reliability"),
                        risk_coverage_curve(conf, hit).assign(curve="risk_coverage", density=np.nan)],
                       ignore_index=True)
    return summary, subjects, bins, sweep, curves


def _keyed(frames: list[tuple[dict, pd.DataFrame]]) -> pd.DataFrame:
    """The frames one after another, each with its KEYS from the dict beside it."""
    table = pd.concat([frame for _, frame in frames], ignore_index=True)
    sizes = [len(frame) for _, frame in frames]
    for key in KEYS:
        table[key] = np.repeat([run[key] for run, _ in frames], sizes)
    return table


def score(
    recalibrated_path: str | os.PathLike,
    summary_out: str | os.PathLike,
    bins_out: str | os.PathLike,
    sweep_out: str | os.PathLike,
    subjects_out: str | os.PathLike,
    curves_out: str | os.PathLike,
    *,
    task: str,
    model: str,
    revision: str,
    step: int | None,
    epoch: int | None,
    n_bins: int,
    n_bootstrap: int,
    seed: int,
    labels: Mapping[str, str | int | float] | None = None,
) -> None:
    """Score every (method, recalibration) of one recalibrated table.

    Writes per (method, recalibration): summary rows (`aggregation` "micro": all rows pooled, with the ECE
    interval; "macro": the mean of the per-subject metrics, where the rows have >= 2 subjects), reliability
    bins, the ECE at SWEEP_BINS bins, metrics per subject (rows with a `subject`), and the curves
    "smooth_reliability" (at smECE's bandwidth) and "risk_coverage". Rows come by method, then
    recalibration in the table's order, then micro before macro. Every summary row holds `params` (counted
    by the inference stage), `step` and `epoch` (the training step and epoch of the revision, as the model
    registry has them; None where unknown) and `labels`.

    The ECE interval resamples the rows of an item_id together, stratified by the first of
    metric_table.STRATA_COLUMNS the rows fill; brier_multiclass and sce need the columns option_probs and gold,
    letter_mass the column letter_mass (NaN for rows that leave them empty); temperature is
    mean_fold_temperature.
    """
    labels = dict(labels or {})
    clashes = sorted(set(labels) & {*KEYS, "aggregation", *METRIC_COLUMNS, *MODEL_INFO})
    if clashes:
        raise ValueError(f"labels may not reuse the column names {clashes}")
    groups = recalibrated_groups(recalibrated_path)
    if not groups:
        raise ValueError(f"{recalibrated_path}: no rows to score")

    keys = {"task": task, "model": model, "revision": revision}
    source = read_provenance(recalibrated_path)
    inference = source.get("input", {}).get("inference", {})  # from the provenance of the confidence table
    # params is counted from the loaded model by the inference stage; step and epoch are the model registry's.
    model_info = {"params": inference.get("params"), "step": step, "epoch": epoch}
    # Methods in name order; the recalibrations of each in the order the table first has them.
    recalibrations = list(dict.fromkeys(recalibration for _, recalibration in groups))
    order = sorted(groups, key=lambda group: (group[0], recalibrations.index(group[1])))
    summary_rows, subject_rows, tables = [], [], {"bins": [], "sweep": [], "curves": []}
    for (method, recalibration), rows in zip(order, each_group_rows(recalibrated_path, order, SCORED_COLUMNS)):
        run = {**keys, "method": method, "recalibration": recalibration}
        try:
            summary, subjects, *group_tables = _score_group(rows, n_bins, n_bootstrap, seed)
        except ValueError as error:
            raise ValueError(f"{recalibrated_path}, method {method!r}, recalibration {recalibration!r}: "
                             f"{error}") from error
        del rows  # before the next group is read
        summary_rows += [{**run, **row, **model_info, **labels} for row in summary]
        subject_rows += [{**run, **row} for row in subjects]
        for frames, frame in zip(tables.values(), group_tables):
            frames.append((run, frame))

    provenance = {
        "stage": "score", **keys, "n_bins": n_bins, "n_bootstrap": n_bootstrap, "seed": seed,
        "sweep_bins": list(SWEEP_BINS), "input": source,
    }
    summary = pd.DataFrame(summary_rows)
    summary = summary[[*KEYS, "aggregation", *METRIC_COLUMNS, *MODEL_INFO, *labels]]
    write_table(summary.astype({column: "Int64" for column in MODEL_INFO}), summary_out, provenance)
    write_table(_keyed(tables["bins"])[[*KEYS, *BIN_COLUMNS]], bins_out, provenance)
    write_table(_keyed(tables["sweep"])[[*KEYS, "n_bins", "ece"]], sweep_out, provenance)
    subjects = pd.DataFrame(subject_rows, columns=[*KEYS, "subject", *METRIC_COLUMNS])
    write_table(subjects.astype({column: "float64" for column in METRIC_COLUMNS} | {"n": "int64", "unparsed": "int64"}),
                subjects_out, provenance)
    write_table(_keyed(tables["curves"])[[*KEYS, "curve", "x", "y", "density"]], curves_out, provenance)
