"""The recalibrate stage: each confidence method's confidences mapped by recalibration maps fitted on
rows they do not score.

Fit sets. Where the task table has held-out rows (``split`` "val"), each map is fitted on all val rows
of the method and scores its test rows (fold 0). Otherwise K-fold cross-fitting (``fold_assignment``):
the method's items are dealt into K folds and fold k's rows are scored by the map fitted on the rows of
the other folds. An item (a CLM document, a fact, a question) is never split between folds, so no row
is scored by a map that saw any row of its item.

Maps, with x = logit(confidence) clipped to [-LOGIT_CLIP, LOGIT_CLIP] and y = ``correct``:
- temperature: multiple choice with ``option_probs``: p_T = softmax(log(option_probs) / T), T fitted by
  the gold option's NLL; confidence = max p_T, ``option_probs`` = p_T, ``correct`` and ``pred`` unchanged
  (dividing by T > 0 keeps the order of the options). Other rows: sigmoid(x / T), T by the binary NLL
  of y. T is the minimiser of the NLL over log T in log(TEMPERATURE_BOUNDS) (scipy's bounded search;
  the NLL is convex in 1/T, so unimodal in log T); a fit set that wants a T beyond the bounds gets the
  bound.
- platt: sigmoid(a x + b), (a, b) the unregularised maximum-likelihood fit of y (scipy trust-exact).
- isotonic: the non-decreasing least-squares fit of y on the confidence (``fit_isotonic``: scikit-learn's
  IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip"), computed with scipy).
- histogram: ``histogram_bins`` equal-mass bins of the fit set's confidences (``fit_histogram``), each
  mapping to the fit rows' accuracy in it.
Only temperature rows of multiple choice carry ``option_probs``; the top-label maps define no option
distribution (None). Rows without a confidence (``parsed`` false: verbalized replies that did not parse)
are neither fitted on nor mapped: each recalibration keeps them as they are, for the metrics to count.

Degenerate fit sets (documented fallbacks, no errors):
- no rows (a method with a single item: K = 1): every map is the identity, T = 1 (a warning is logged);
- temperature: where the NLL does not depend on T (every logit 0, or every row's options equally
  likely), T = 1;
- platt: where the classes do not overlap in x (a single class, a single distinct confidence, or every
  wrong row at most as confident as every right one or the reverse), the maximum-likelihood fit does
  not exist or is not unique; platt is then the constant map to the fit set's accuracy (a = 0,
  b = logit(accuracy), clipped): what isotonic and histogram give on a single class or confidence;
- isotonic and histogram are defined on any non-empty fit set (a single class maps everything to 0 or 1).
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy.optimize import isotonic_regression, minimize, minimize_scalar
from scipy.special import expit, logsumexp

from .metrics import option_indices, unparsed_rows
from .tables import read_provenance, read_table, write_table

log = logging.getLogger(__name__)

RECALIBRATION_METHODS = ("temperature", "platt", "isotonic", "histogram")
# |logit| at most this (confidences within about 9e-14 of 0 and 1); option log-probabilities at least -LOGIT_CLIP.
LOGIT_CLIP = 30.0
TEMPERATURE_BOUNDS = (1e-2, 1e2)
CONFIDENCE_COLUMNS = ["item_id", "method", "confidence", "correct"]
TASK_COLUMNS = ("item_id", "split")  # what recalibrate reads of the task table (not a CLM document's text)


# ---------------------------------------------------------------- the maps


def logit(confidence) -> np.ndarray:
    """log(c / (1 - c)), clipped to [-LOGIT_CLIP, LOGIT_CLIP] (0 and 1 give the bounds)."""
    c = np.asarray(confidence, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.clip(np.log(c) - np.log1p(-c), -LOGIT_CLIP, LOGIT_CLIP)


def _bounded_temperature(nll) -> float:
    low, high = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-9})
    return float(np.exp(result.x))


def fit_temperature(confidence, correct) -> float:
    """T > 0 minimising the binary NLL of `correct` under sigmoid(logit(confidence) / T); 1 where the NLL
    does not depend on T (no rows, every confidence 0.5)."""
    x, y = logit(confidence), np.asarray(correct, dtype=bool)
    if not x.any():
        return 1.0
    signed = np.where(y, -x, x)  # the NLL of a row is log(1 + exp(signed / T))
    return _bounded_temperature(lambda u: float(np.logaddexp(0.0, signed * np.exp(-u)).sum()))


def temperature_scale(confidence, temperature: float) -> np.ndarray:
    """sigmoid(logit(confidence) / T)."""
    return expit(logit(confidence) / temperature)


def _option_blocks(option_probs) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rows, log-probabilities clipped below at -LOGIT_CLIP) for each option count."""
    vectors = [np.asarray(p, dtype=np.float64) for p in option_probs]
    lengths = np.array([len(v) for v in vectors], dtype=np.int64)
    blocks = []
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        with np.errstate(divide="ignore"):
            blocks.append((rows, np.maximum(np.log(np.stack([vectors[i] for i in rows])), -LOGIT_CLIP)))
    return blocks


def fit_option_temperature(option_probs, gold) -> float:
    """T > 0 minimising the NLL of the gold options under softmax(log(option_probs) / T); 1 where it does
    not depend on T (no rows, every row's options equally likely). Items may have any number of options."""
    gold = np.asarray(gold, dtype=np.int64)
    blocks = [(scores, scores[np.arange(len(rows)), gold[rows]]) for rows, scores in _option_blocks(option_probs)]
    if all(np.ptp(scores, axis=1).max() == 0 for scores, _ in blocks):
        return 1.0

    def nll(u):
        beta = np.exp(-u)
        return float(sum((logsumexp(scores * beta, axis=1) - gold_scores * beta).sum()
                         for scores, gold_scores in blocks))

    return _bounded_temperature(nll)


def scale_options(option_probs, temperature: float) -> list[np.ndarray]:
    """softmax(log(option_probs) / T) of each row (log-probabilities clipped below at -LOGIT_CLIP)."""
    out = [None] * len(option_probs)
    for rows, scores in _option_blocks(option_probs):
        scaled = scores / temperature
        p = np.exp(scaled - scaled.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        for j, i in enumerate(rows):
            out[i] = p[j]
    return out


def _classes_overlap(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether no threshold on x has every row of one class at or below it and the other at or above."""
    if y.all() or not y.any():
        return False
    return x[~y].max() > x[y].min() and x[y].max() > x[~y].min()


def fit_platt(confidence, correct) -> tuple[float, float]:
    """(a, b) of sigmoid(a * logit(confidence) + b) by unregularised maximum likelihood of `correct`; where
    the classes do not overlap in logit (no maximum exists or it is not unique), the constant map to the
    accuracy: (0, logit(accuracy)). No rows: the identity (1, 0)."""
    x, y = logit(confidence), np.asarray(correct, dtype=np.float64)
    if len(x) == 0:
        return 1.0, 0.0
    if not _classes_overlap(x, y.astype(bool)):
        return 0.0, float(logit(y.mean()))
    design = np.column_stack([x, np.ones_like(x)])

    def nll(w):
        z = design @ w
        return float((np.logaddexp(0.0, z) - y * z).sum())

    def gradient(w):
        return design.T @ (expit(design @ w) - y)

    def hessian(w):
        p = expit(design @ w)
        return (design * (p * (1.0 - p))[:, None]).T @ design

    result = minimize(nll, np.array([1.0, 0.0]), jac=gradient, hess=hessian, method="trust-exact",
                      options={"gtol": 1e-10})
    return float(result.x[0]), float(result.x[1])


def platt_scale(confidence, a: float, b: float) -> np.ndarray:
    """sigmoid(a * logit(confidence) + b)."""
    return expit(a * logit(confidence) + b)


def fit_isotonic(confidence, correct):
    """The non-decreasing least-squares fit of `correct` on the confidence, as a function of confidences
    (no rows: the identity): scipy's isotonic_regression of the mean correctness at each distinct
    confidence, weighted by its rows, interpolated linearly between them and constant beyond them. This is
    scikit-learn's IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip") (tested against it) without
    its import, a second of each of the ~130 recalibration jobs of the default run."""
    if len(confidence) == 0:
        return lambda c: np.asarray(c, dtype=np.float64)
    values, inverse, counts = np.unique(np.asarray(confidence, dtype=np.float64), return_inverse=True,
                                        return_counts=True)
    means = np.bincount(inverse, weights=np.asarray(correct, dtype=np.float64)) / counts
    fitted = isotonic_regression(means, weights=counts.astype(np.float64)).x
    return lambda c: np.interp(np.asarray(c, dtype=np.float64), values, fitted)


def fit_histogram(confidence, correct, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(upper edges, accuracies) of histogram binning on min(bins, n) equal-mass bins.

    The sorted confidences are cut into consecutive runs of near-equal size (np.array_split's); each
    edge is the midpoint between the last value of a run and the first of the next, the top edge 1. A
    confidence belongs to the bin of the first edge at or above it (np.searchsorted, side left), a bin maps
    to the accuracy of its fit rows. Ties can leave a bin without fit rows: it joins the bin above it (the
    top bin the one below). No rows: ((1,), NaN), which ``histogram_scale`` reads as the identity."""
    c = np.asarray(confidence, dtype=np.float64)
    if len(c) == 0:
        return np.array([1.0]), np.array([np.nan])
    runs = np.array_split(np.sort(c), min(bins, len(c)))
    edges = np.unique([(low[-1] + high[0]) / 2.0 for low, high in zip(runs, runs[1:])] + [1.0])
    index = np.searchsorted(edges, c)
    counts = np.bincount(index, minlength=len(edges))
    hits = np.bincount(index, weights=np.asarray(correct, dtype=np.float64), minlength=len(edges))
    kept = counts > 0
    upper = edges[kept]
    upper[-1] = 1.0
    return upper, hits[kept] / counts[kept]


def histogram_scale(confidence, edges: np.ndarray, accuracies: np.ndarray) -> np.ndarray:
    """The accuracy of each confidence's bin (``fit_histogram``); the identity for an empty fit."""
    c = np.asarray(confidence, dtype=np.float64)
    if np.isnan(accuracies).all():
        return c.copy()
    return accuracies[np.searchsorted(edges, c)]


def _fit(method: str, fit: pd.DataFrame, options: bool, bins: int):
    """The map of `method` fitted on the rows `fit`, as a function rows -> (confidence, option_probs, T)."""
    confidence, correct = fit["confidence"].to_numpy(np.float64), fit["correct"].to_numpy(bool)
    if method == "temperature" and options:
        t = fit_option_temperature(list(fit["option_probs"]), fit["gold"].to_numpy())

        def scored(rows):
            probs = scale_options(list(rows["option_probs"]), t)
            return np.array([p.max() for p in probs]), probs, t
        return scored
    if method == "temperature":
        t = fit_temperature(confidence, correct)
        return lambda rows: (temperature_scale(rows["confidence"], t), None, t)
    if method == "platt":
        a, b = fit_platt(confidence, correct)
        return lambda rows: (platt_scale(rows["confidence"], a, b), None, np.nan)
    if method == "isotonic":
        function = fit_isotonic(confidence, correct)
        return lambda rows: (function(rows["confidence"]), None, np.nan)
    edges, accuracies = fit_histogram(confidence, correct, bins)
    return lambda rows: (histogram_scale(rows["confidence"], edges, accuracies), None, np.nan)


# ---------------------------------------------------------------- fit sets


def fold_assignment(item_ids, folds: int, seed: int) -> np.ndarray:
    """The fold of each row: the unique item ids, sorted, shuffled by numpy default_rng(seed) and dealt
    round robin into K = min(folds, number of items) folds, so that every row of an item is in its fold."""
    items = np.unique(np.asarray(item_ids, dtype=object).astype(str))
    shuffled = np.random.default_rng(seed).permutation(items)
    fold_of = dict(zip(shuffled, np.arange(len(shuffled)) % max(min(folds, len(items)), 1)))
    return np.array([fold_of[str(i)] for i in item_ids], dtype=np.int64)


def item_splits(data: pd.DataFrame, data_path="the task table") -> pd.Series:
    """The split ("test" | "val") of each item_id of a task table; all "test" without a split column."""
    if "item_id" not in data.columns:
        raise ValueError(f"{data_path}: missing column 'item_id'")
    if "split" not in data.columns:
        return pd.Series("test", index=pd.Index(pd.unique(data["item_id"]), name="item_id"), name="split")
    bad = data[~data["split"].isin(["test", "val"])]
    if len(bad):
        raise ValueError(f"{data_path}: column 'split' must be 'test' or 'val', got {bad['split'].iloc[0]!r} "
                         f"(item {bad['item_id'].iloc[0]!r})")
    both = data.groupby("item_id", sort=False)["split"].nunique()
    if (both > 1).any():
        raise ValueError(f"{data_path}: item {both.index[both > 1][0]!r} has rows in both splits (column 'split')")
    return data.drop_duplicates("item_id").set_index("item_id")["split"]


def _check_options(methods, folds, seed, histogram_bins) -> list[str]:
    """The recalibration methods in RECALIBRATION_METHODS order; ValueError for a bad option."""
    if isinstance(methods, str) or not all(isinstance(m, str) for m in methods):
        raise ValueError(f"recalibration methods must be a list of names, got {methods!r}")
    unknown = [m for m in methods if m not in RECALIBRATION_METHODS]
    if unknown:
        raise ValueError(f"unknown recalibration method(s) {unknown}; known: {list(RECALIBRATION_METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"recalibration methods must not repeat, got {list(methods)}")
    for name, value, least in (("folds", folds, 2), ("histogram_bins", histogram_bins, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"recalibration {name} must be a whole number >= {least}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"recalibration seed must be a whole number, got {seed!r}")
    return [m for m in RECALIBRATION_METHODS if m in methods]


def _check_rows(rows: pd.DataFrame, path, method: str) -> bool:
    """Check one method's confidence rows; whether they carry option distributions (multiple choice)."""
    where = f"{path}, method {method!r}"
    confidence = pd.to_numeric(rows["confidence"], errors="coerce").to_numpy(np.float64)
    bad = ~(np.isfinite(confidence) & (confidence >= 0.0) & (confidence <= 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{where}: column 'confidence' must be a probability within [0, 1]; item "
                         f"{rows['item_id'].iloc[i]!r} has {rows['confidence'].iloc[i]!r}")
    correct = rows["correct"]
    if not (correct.dtype == bool or correct.isin([0, 1]).all()):
        raise ValueError(f"{where}: column 'correct' must be true/false, got "
                         f"{correct[~correct.isin([0, 1])].iloc[0]!r}")
    if "option_probs" not in rows.columns or rows["option_probs"].isna().all():
        return False
    missing = rows["option_probs"].isna().to_numpy()
    if missing.any() or "gold" not in rows.columns:
        item = rows["item_id"].iloc[int(np.flatnonzero(missing)[0])] if missing.any() else None
        raise ValueError(f"{where}: temperature scaling of options needs column 'option_probs' on every row and "
                         f"column 'gold'" + (f"; item {item!r} has no option_probs" if item is not None else ""))
    lengths = np.empty(len(rows), dtype=np.int64)
    for i, (item, p) in enumerate(zip(rows["item_id"], rows["option_probs"])):
        p = np.asarray(p, dtype=np.float64)
        if p.ndim != 1 or len(p) == 0 or not (np.isfinite(p) & (p >= 0.0)).all():
            raise ValueError(f"{where}: column 'option_probs' of item {item!r} must be probabilities, one per "
                             f"option, got {p.tolist()}")
        lengths[i] = len(p)
    _, invalid = option_indices(rows["gold"].to_numpy(), lengths)
    if invalid.any():
        i = int(np.flatnonzero(invalid)[0])
        raise ValueError(f"{where}: column 'gold' of item {rows['item_id'].iloc[i]!r} must be an option index "
                         f"within [0, {lengths[i]}), got {rows['gold'].iloc[i]!r}")
    return True


# ---------------------------------------------------------------- the stage


def recalibrate(confidence_path, data_path, out_path, *, methods, folds: int, seed: int,
                histogram_bins: int) -> None:
    """Write, for every confidence method and every recalibration in ["none", *methods] (in
    RECALIBRATION_METHODS order), the rows of the method's test items: every column of the confidence
    table, ``recalibration`` after ``method``, then ``temperature`` (float64, the T of temperature rows,
    NaN elsewhere) and ``fold`` (Int64, the fold whose map scored the row: 0 when fitted on the val split,
    <NA> on "none")."""
    methods = _check_options(methods, folds, seed, histogram_bins)
    table, data = read_table(confidence_path), pd.read_parquet(data_path, columns=_present(data_path, TASK_COLUMNS))
    missing = [c for c in CONFIDENCE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{confidence_path}: missing columns {missing}")
    splits = item_splits(data, data_path)
    unknown = table["item_id"][~table["item_id"].isin(splits.index)]
    if len(unknown):
        raise ValueError(f"{confidence_path}: {unknown.nunique()} item_id(s) are not in the task table {data_path} "
                         f"(e.g. {unknown.iloc[0]!r})")
    held_out = bool((splits == "val").any())
    frames = []
    for method in pd.unique(table["method"]):
        rows = table[table["method"] == method]
        unparsed, split = unparsed_rows(rows), splits.loc[rows["item_id"]].to_numpy()
        rows, kept = rows[~unparsed], rows[unparsed & (split == "test")]
        val_unparsed = (unparsed & (split == "val")).any()
        options = _check_rows(rows, confidence_path, method)
        split = splits.loc[rows["item_id"]].to_numpy()
        test, val = rows[split == "test"].reset_index(drop=True), rows[split == "val"]
        frames.append(_rows(test, "none", test["confidence"].to_numpy(np.float64), None, np.nan, pd.NA))
        frames += [kept.assign(recalibration=r, temperature=np.nan, fold=pd.NA) for r in ["none", *methods]
                   if len(kept)]
        if not methods:
            continue
        if held_out:
            if val.empty and not val_unparsed:
                raise ValueError(f"{data_path} has val rows, but {confidence_path} has none of method {method!r} "
                                 "to fit its recalibration on")
            fold, fit_folds = np.zeros(len(test), dtype=np.int64), [0]
        else:
            fold = fold_assignment(test["item_id"], folds, seed)
            fit_folds = np.unique(fold)
        # Fold k's maps are fitted on the val rows, or on the test rows of the other folds, taken as each map is
        # fitted: the K sets at once would hold K - 1 copies of the method's rows (a CLM run's tokens).
        for k in fit_folds:
            if (val.empty if held_out else (fold == k).all()) and len(test):
                log.warning("method %s: fold %d has no rows to fit on (a single item); its maps are the identity",
                            method, k)
        for recalibration in methods:
            confidence, probs = np.empty(len(test)), [None] * len(test)
            temperature = np.full(len(test), np.nan)
            for k in fit_folds:
                fit = val if held_out else test[fold != k]
                at = np.flatnonzero(fold == k)
                scored = _fit(recalibration, fit, options, histogram_bins)(test.iloc[at])
                confidence[at], temperature[at] = scored[0], scored[2]
                if scored[1] is not None:
                    for j, i in enumerate(at):
                        probs[i] = scored[1][j]
                if recalibration == "temperature":
                    log.info("method %s, fold %d: T = %.4f (fitted on %d rows)", method, k, scored[2], len(fit))
            frames.append(_rows(test, recalibration, confidence, probs if options else None, temperature,
                                pd.array(fold, dtype="Int64")))
    columns = list(table.columns)
    columns.insert(columns.index("method") + 1, "recalibration")
    result = pd.concat(frames, ignore_index=True) if frames else _rows(table, "none", [], None, np.nan, pd.NA)
    del frames  # the recalibrations' rows, now in result
    result = result[columns + ["temperature", "fold"]].astype({"temperature": np.float64, "fold": "Int64"})
    write_table(result, out_path,
                provenance={"stage": "recalibrate", "methods": methods, "folds": folds, "seed": seed,
                            "histogram_bins": histogram_bins, "fit": "val split" if held_out else "k-fold",
                            "input": read_provenance(confidence_path)})


def _present(path, columns) -> list[str]:
    """Those of `columns` that the Parquet table at `path` has."""
    names = pq.read_schema(path).names
    return [column for column in columns if column in names]


def _rows(test: pd.DataFrame, recalibration: str, confidence, option_probs, temperature, fold) -> pd.DataFrame:
    """The test rows with the confidences (and, where not None, option_probs) of one recalibration."""
    out = test.assign(recalibration=recalibration, confidence=confidence, temperature=temperature, fold=fold)
    if option_probs is not None:
        out["option_probs"] = pd.Series(option_probs, index=out.index, dtype=object)
    return out
