"""The summarize stage: the per-run tables of score gathered into one table each for the whole study."""
from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd

from .scoring import KEYS, METRIC_COLUMNS, MODEL_INFO
from .tables import atomic_path, read_provenance, read_table, write_table


def _concatenated(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """The tables at `paths` one after another, in the order given, each run's rows in their own order."""
    return _joined([read_table(path) for path in paths])


def _joined(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        raise ValueError("no tables to summarize")
    filled = [frame for frame in frames if not frame.empty] or frames[:1]
    return pd.concat(filled, ignore_index=True, sort=False)


def _text_if_mixed(summary: pd.DataFrame) -> pd.DataFrame:
    """Label columns holding both numbers and text across runs (e.g. params 1e9 and "160M") become text."""
    for column in summary.columns.difference([*KEYS, "aggregation", *METRIC_COLUMNS, *MODEL_INFO]):
        if summary[column].dtype == object:
            summary[column] = summary[column].map(lambda value: value if pd.isna(value) else str(value))
    return summary


def _gathered(paths: Sequence[str | os.PathLike]) -> dict:
    return {"stage": "summarize", "inputs": {str(path): read_provenance(path) for path in paths}}


def summarize(
    summary_paths: Sequence[str | os.PathLike],
    bins_paths: Sequence[str | os.PathLike],
    sweep_paths: Sequence[str | os.PathLike],
    subjects_paths: Sequence[str | os.PathLike],
    curves_paths: Sequence[str | os.PathLike],
    summary_parquet: str | os.PathLike,
    summary_csv: str | os.PathLike,
    reliability_parquet: str | os.PathLike,
    sweep_parquet: str | os.PathLike,
    subjects_parquet: str | os.PathLike,
    curves_parquet: str | os.PathLike,
) -> None:
    """Gather the per-run outputs of score into one table each: the summary (Parquet and CSV), reliability
    bins, bin sweep, subject metrics and curves, every table's runs in the summary's natural order.

    Label columns are the union over runs; a run without a label has it empty. The i-th path of each list
    belongs to the same run.
    """
    from .order import natural_order  # the figures' order of runs, one sort key for both

    runs = [read_table(path) for path in summary_paths]
    summary = natural_order(_text_if_mixed(_joined(runs))).reset_index(drop=True)
    write_table(summary, summary_parquet, _gathered(summary_paths))
    with atomic_path(summary_csv, suffix=".csv") as tmp:
        summary.to_csv(tmp, index=False)
    rank = {run: i for i, run in enumerate(dict.fromkeys(zip(summary["task"], summary["model"], summary["revision"])))}
    order = sorted(range(len(runs)), key=lambda i: rank[tuple(runs[i][list(KEYS[:3])].iloc[0])])  # never empty
    for paths, out in ((bins_paths, reliability_parquet), (sweep_paths, sweep_parquet),
                       (subjects_paths, subjects_parquet), (curves_paths, curves_parquet)):
        write_table(_concatenated([paths[i] for i in order]), out, _gathered(paths))
