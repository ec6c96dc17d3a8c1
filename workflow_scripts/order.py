"""The natural order of runs, tasks, methods and recalibrations: the summary (metrics.summarize) and every
figure and table order their rows by it. pandas and numpy only, so that the summary does not depend on the
figures' code."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

STANDARD = "standard"  # the data variant of a model without a `data` label
RECALIBRATIONS = ("none", "temperature", "platt", "isotonic", "histogram")  # 'none' (raw), then recalibrate's methods
STAGES = ("base", "sft", "dpo", "rlhf")  # the order of training stages; a run without a stage is a base model
COUNT_UNITS = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def is_missing(value) -> bool:
    """Whether a label is missing: None or NaN (text, tuples and lists never are)."""
    return value is None or (not isinstance(value, (str, tuple, list)) and pd.isna(value))


def natural_key(text) -> tuple:
    """A sort key of text with its digit runs as numbers ('step4' < 'step16', 'm-9' < 'm-10'), case
    folded; missing values (None, NaN) last."""
    if is_missing(text):
        return (1,)
    parts = re.split(r"(\d+)", str(text).casefold())
    return (0, *[int(p) if i % 2 else p for i, p in enumerate(parts)])


def parameter_count(params, size=None) -> float:
    """A model's parameter count: `params` where it is a number, else a count label in `params` or
    `size` such as '1.4b' or '160M'; NaN where neither gives one."""
    for value in (params, size):
        if is_missing(value):
            continue
        number = pd.to_numeric(value, errors="coerce")
        if pd.notna(number):
            return float(number)
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmbt])\s*", str(value), flags=re.IGNORECASE)
        if match:
            return float(match.group(1)) * COUNT_UNITS[match.group(2).lower()]
    return float("nan")


def stage_rank(stage) -> tuple:
    """Sort key of a stage: base (or none), sft, dpo, rlhf, then any other by name."""
    stage = "base" if is_missing(stage) else str(stage).casefold()
    return (STAGES.index(stage),) if stage in STAGES else (len(STAGES), natural_key(stage))


def _number_key(value) -> float:
    value = pd.to_numeric(value, errors="coerce")
    return float("inf") if pd.isna(value) else float(value)


def run_keys(table: pd.DataFrame) -> dict[tuple[str, str], tuple]:
    """(model, revision) -> its sort key in the natural order of runs, from the label columns of
    `table` (those missing count as unknown): by family (runs without one last), then data (within a
    family the data variants of its base models come first, 'standard' before the others, then those
    of the tuned stages; a run without `data` has 'standard'), then parameter count (`params`, else a
    `size` like '1.4b'; unknown last), then stage (base, sft, dpo, rlhf), tuning, model name, then the
    revision by step, epoch (unknown last) and name (digits as numbers: step4 before step16)."""
    columns = ("family", "data", "stage", "tuning", "size", "params", "step", "epoch")
    runs = table.drop_duplicates(["model", "revision"])
    runs = runs.assign(**{c: np.nan for c in columns if c not in runs.columns})
    data = runs["data"].astype(object).where(runs["data"].notna(), STANDARD).astype(str)
    families = runs["family"].map(natural_key)
    first_stage = {}  # (family, data) -> the earliest stage that uses it
    for family, variant, stage in zip(families, data, runs["stage"]):
        first_stage[(family, variant)] = min(first_stage.get((family, variant), (len(STAGES) + 1,)), stage_rank(stage))
    keys = {}
    for (_, run), family, variant in zip(runs.iterrows(), families, data):
        keys[(run["model"], run["revision"])] = (
            family, first_stage[(family, variant)], variant != STANDARD, natural_key(variant),
            _number_key(parameter_count(run["params"], run["size"])), stage_rank(run["stage"]),
            natural_key(run["tuning"]), natural_key(run["model"]),
            _number_key(run["step"]), _number_key(run["epoch"]), natural_key(run["revision"]))
    return keys


def natural_runs(table: pd.DataFrame) -> list[tuple[str, str]]:
    """The distinct (model, revision) of `table` in natural order (see run_keys)."""
    keys = run_keys(table)
    return sorted(keys, key=keys.get)


def natural_order(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a summary-like table in natural order: by task (by name, digits as numbers), run
    (run_keys), method (by name), recalibration ('none' first, see recalibration_order), aggregation
    (micro first); rows equal in all of these keep their order. Columns it lacks are left out of the key."""
    if table.empty:
        return table
    ranks = {}
    if "task" in table.columns:
        tasks = sorted(ordered_unique(table["task"]), key=natural_key)
        ranks["task"] = table["task"].map({t: i for i, t in enumerate(tasks)})
    if {"model", "revision"} <= set(table.columns):
        runs = {run: i for i, run in enumerate(natural_runs(table))}
        ranks["run"] = pd.Series([runs[key] for key in zip(table["model"], table["revision"])], index=table.index)
    if "method" in table.columns:
        methods = sorted(ordered_unique(table["method"]), key=natural_key)
        ranks["method"] = table["method"].map({m: i for i, m in enumerate(methods)})
    if "recalibration" in table.columns:
        ranks["recalibration"] = table["recalibration"].map(
            {r: i for i, r in enumerate(recalibration_order(table["recalibration"]))})
    if "aggregation" in table.columns:
        ranks["aggregation"] = table["aggregation"].map({"micro": 0, "macro": 1}).fillna(2)
    if not ranks:
        return table
    order = pd.DataFrame({name: rank.to_numpy() for name, rank in ranks.items()})
    return table.iloc[order.sort_values(list(ranks), kind="stable").index.to_numpy()]


def ordered_unique(values) -> list:
    """The distinct values in order of first appearance."""
    return list(dict.fromkeys(values))


def recalibration_order(values) -> list[str]:
    """The distinct recalibrations: 'none' first, then the known methods in RECALIBRATIONS order, then any
    others in order of first appearance."""
    present = ordered_unique(values)
    known = [r for r in RECALIBRATIONS if r in present]
    return known + [r for r in present if r not in RECALIBRATIONS]
