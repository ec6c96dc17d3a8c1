"""The recalibrate stage (workflow_scripts.recalibrate): each map against hand-worked cases and an
independent implementation (Kumar et al.'s `calibration` package, scikit-learn, a brute-force NLL grid),
fit sets that never hold the rows they score, and the table's layout."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from calibration import get_equal_bins, get_histogram_calibrator, get_platt_scaler
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from workflow_scripts import recalibrate as R
from workflow_scripts.tables import read_provenance, read_table, write_table

GRID = np.linspace(0.0, 1.0, 1001)
ALL = list(R.RECALIBRATION_METHODS)


def miscalibrated(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Continuous confidences (no ties) of an overconfident model: accuracy conf**2."""
    rng = np.random.default_rng(seed)
    confidence = rng.beta(3, 2, n)
    return confidence, rng.random(n) < confidence ** 2


def clm_table(n_items: int = 12, per_item: int = 15, seed: int = 0) -> pd.DataFrame:
    """A CLM-like confidence table: many rows (tokens) per item (document)."""
    confidence, correct = miscalibrated(n_items * per_item, seed)
    return pd.DataFrame({"item_id": np.repeat([f"doc/{i}" for i in range(n_items)], per_item), "method": "max_prob",
                         "confidence": confidence, "correct": correct,
                         "position": np.tile(np.arange(per_item), n_items)})


def mc_table(n_items: int = 60, seed: int = 0, prefix: str = "q", method: str = "option_softmax") -> pd.DataFrame:
    """A multiple-choice confidence table as extract_confidence writes it, items with 2 to 5 options."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_items):
        scores = rng.normal(0.0, 3.0, 2 + i % 4)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        pred = int(np.argmax(probs))
        gold = pred if rng.random() < 0.5 else int(rng.integers(len(probs)))
        rows.append({"item_id": f"{prefix}/{i}", "method": method, "confidence": probs[pred], "correct": pred == gold,
                     "subject": "s" if i % 2 else "t", "option_probs": probs, "gold": gold, "pred": pred,
                     "letter_mass": 0.5})
    return pd.DataFrame(rows)


def other_gold(rows: pd.DataFrame) -> pd.DataFrame:
    """New labels of multiple-choice rows: the next option is gold; correct follows."""
    gold = [(g + 1) % len(p) for g, p in zip(rows["gold"], rows["option_probs"])]
    return pd.DataFrame({"gold": gold, "correct": np.array(gold) == rows["pred"].to_numpy()}, index=rows.index)


def data_table(confidence: pd.DataFrame, val_items=()) -> pd.DataFrame:
    items = pd.unique(confidence["item_id"])
    return pd.DataFrame({"item_id": items, "split": ["val" if i in set(val_items) else "test" for i in items]})


def run(tmp_path, confidence: pd.DataFrame, data: pd.DataFrame | None = None, name: str = "out",
        **options) -> pd.DataFrame:
    """recalibrate() on these tables; the recalibrated table."""
    conf_path, data_path = tmp_path / f"{name}.conf.parquet", tmp_path / f"{name}.data.parquet"
    out = tmp_path / f"{name}.parquet"
    write_table(confidence, conf_path, provenance={"stage": "extract_confidence", "marker": name})
    write_table(data_table(confidence) if data is None else data, data_path)
    settings = {"methods": ALL, "folds": 5, "seed": 0, "histogram_bins": 10, **options}
    R.recalibrate(conf_path, data_path, out, **settings)
    return read_table(out)


def rows_of(table: pd.DataFrame, recalibration: str) -> pd.DataFrame:
    return table[table["recalibration"] == recalibration].reset_index(drop=True)


# ---------------------------------------------------------------- each map


def test_platt_matches_kumar_et_al():
    for seed, n in ((0, 400), (1, 60)):
        confidence, correct = miscalibrated(n, seed)
        a, b = R.fit_platt(confidence, correct)
        theirs, clf = get_platt_scaler(confidence, correct.astype(int), get_clf=True)
        # their LogisticRegression(C=1e10) stops at scikit-learn's default tol=1e-4: close, and no better a fit
        np.testing.assert_allclose(R.platt_scale(GRID, a, b), theirs(GRID), atol=1e-3)
        x = np.log(confidence / (1 - confidence))

        def nll(a, b, x=x, correct=correct):
            return np.sum(np.logaddexp(0, a * x + b) - correct * (a * x + b))

        assert nll(a, b) <= nll(clf.coef_[0][0], clf.intercept_[0]) + 1e-9
        # the same model solved to a tight tolerance agrees to many digits
        tight = LogisticRegression(C=1e10, tol=1e-12, max_iter=10_000).fit(x[:, None], correct)
        assert (a, b) == pytest.approx((tight.coef_[0][0], tight.intercept_[0]), abs=1e-6)
        assert a > 1  # overconfident at the top, underconfident at the bottom: a steeper sigmoid


def test_platt_hand_worked():
    # logits -1 (1 of 4 right) and +1 (3 of 4 right): the fit is exact at both, sigmoid(-a + b) = 1/4 and
    # sigmoid(a + b) = 3/4, so a = (logit 3/4 - logit 1/4) / 2 = ln 3 and b = 0
    confidence = np.repeat(1 / (1 + np.exp([1.0, -1.0])), 4)
    a, b = R.fit_platt(confidence, [True, False, False, False, True, True, True, False])
    assert a == pytest.approx(math.log(3), abs=1e-7) and b == pytest.approx(0.0, abs=1e-7)


def test_histogram_matches_kumar_et_al():
    for n, bins in ((500, 10), (37, 7), (5, 10)):  # the last: fewer rows than bins, one bin per row
        confidence, correct = miscalibrated(n, n)
        edges, accuracies = R.fit_histogram(confidence, correct, bins)
        theirs = get_histogram_calibrator(confidence, correct, get_equal_bins(confidence, num_bins=bins))
        np.testing.assert_allclose(R.histogram_scale(GRID, edges, accuracies), theirs(GRID), rtol=0, atol=1e-12)
        assert len(edges) == min(n, bins)


def test_histogram_hand_worked_and_ties():
    # 2 bins of 2: edge (0.2 + 0.3) / 2 = 0.25; the edge belongs to the bin below
    edges, accuracies = R.fit_histogram([0.1, 0.2, 0.3, 0.4], [False, True, True, True], 2)
    np.testing.assert_allclose(edges, [0.25, 1.0])
    np.testing.assert_allclose(accuracies, [0.5, 1.0])
    np.testing.assert_allclose(R.histogram_scale([0.0, 0.25, 0.26, 1.0], edges, accuracies), [0.5, 0.5, 1.0, 1.0])
    # ties: runs [.5 .5] [.5 .5] [.7 .8] give edges 0.5, 0.6, 1; the bin (0.5, 0.6] has no fit rows and
    # joins the bin above it: 0.55 maps to the accuracy of 0.7 and 0.8
    edges, accuracies = R.fit_histogram([0.5, 0.5, 0.5, 0.5, 0.7, 0.8], [1, 0, 0, 0, 1, 1], 3)
    np.testing.assert_allclose(edges, [0.5, 1.0])
    np.testing.assert_allclose(R.histogram_scale([0.3, 0.5, 0.55, 0.9], edges, accuracies), [0.25, 0.25, 1.0, 1.0])
    # every value tied: the top bin is empty and joins the one below, one bin in all
    edges, accuracies = R.fit_histogram([0.6] * 4, [1, 1, 0, 1], 2)
    assert edges.tolist() == [1.0] and accuracies.tolist() == [0.75]


def test_isotonic_matches_scikit_learn_and_hand_worked():
    confidence, correct = miscalibrated(300)
    direct = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(confidence, correct.astype(float))
    np.testing.assert_allclose(R.fit_isotonic(confidence, correct)(GRID), direct.predict(GRID), rtol=0, atol=1e-12)
    tied = np.round(confidence, 1)  # many rows per distinct confidence: scikit-learn averages them first
    direct = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(tied, correct.astype(float))
    np.testing.assert_allclose(R.fit_isotonic(tied, correct)(GRID), direct.predict(GRID), rtol=0, atol=1e-12)
    # pool adjacent violators: [1, 0] pool to 0.5; 0.15 interpolates inside the pool; below and above clip
    function = R.fit_isotonic([0.1, 0.2, 0.3, 0.4], [True, False, True, True])
    np.testing.assert_allclose(function([0.05, 0.1, 0.15, 0.2, 0.35, 0.9]), [0.5, 0.5, 0.5, 0.5, 1.0, 1.0])


def _binary_nll(confidence, correct, t):
    """Written out: -log of sigmoid(logit / T) on right rows, of 1 - it on wrong ones."""
    z = np.log(confidence / (1 - confidence)) / t
    p = 1 / (1 + np.exp(-z))
    with np.errstate(divide="ignore"):  # a small T on the grid rounds some p to 1: an infinite NLL there
        return -np.sum(np.where(correct, np.log(p), np.log(1 - p)))


def _options_nll(option_probs, gold, t):
    total = 0.0
    for probs, g in zip(option_probs, gold):
        powered = np.asarray(probs) ** (1 / t)  # softmax(log p / T) = p^(1/T) / sum
        total -= np.log(powered[g] / powered.sum())
    return total


def test_temperature_is_the_minimum_of_the_nll():
    log_grid = np.linspace(np.log(0.05), np.log(20.0), 4001)
    confidence, correct = miscalibrated(300)
    t = R.fit_temperature(confidence, correct)
    nll = np.array([_binary_nll(confidence, correct, math.exp(u)) for u in log_grid])
    assert abs(math.log(t) - log_grid[nll.argmin()]) <= log_grid[1] - log_grid[0]
    assert _binary_nll(confidence, correct, t) <= nll.min() + 1e-9
    table = mc_table(80)
    t = R.fit_option_temperature(table["option_probs"], table["gold"])
    nll = np.array([_options_nll(table["option_probs"], table["gold"], math.exp(u)) for u in log_grid])
    assert abs(math.log(t) - log_grid[nll.argmin()]) <= log_grid[1] - log_grid[0]
    assert _options_nll(table["option_probs"], table["gold"], t) <= nll.min() + 1e-9
    assert t != pytest.approx(1.0, abs=0.05)  # a T that does something


def test_temperature_hand_worked():
    # one confidence sigmoid(2), 3 of 4 right: the NLL is least where sigmoid(2 / T) = 3/4, T = 2 / ln 3
    t = R.fit_temperature(np.full(4, 1 / (1 + math.exp(-2))), [True, True, True, False])
    assert t == pytest.approx(2 / math.log(3), rel=1e-6)
    # two options at 0.8 / 0.2 (log-ratio ln 4), gold the first in 3 of 4: 4^(1/T) / (4^(1/T) + 1) = 3/4,
    # T = ln 4 / ln 3; the scaled options are then 3/4, 1/4
    t = R.fit_option_temperature([np.array([0.8, 0.2])] * 4, [0, 0, 0, 1])
    assert t == pytest.approx(math.log(4) / math.log(3), rel=1e-6)
    np.testing.assert_allclose(R.scale_options([np.array([0.8, 0.2])], t)[0], [0.75, 0.25], rtol=1e-6)
    np.testing.assert_allclose(R.temperature_scale([0.25, 0.5, 0.75], 2.0),
                               [1 / (1 + math.sqrt(3)), 0.5, math.sqrt(3) / (1 + math.sqrt(3))])


def test_logits_are_clipped_by_one_constant():
    assert R.logit([0.0, 0.5, 1.0]).tolist() == [-R.LOGIT_CLIP, 0.0, R.LOGIT_CLIP]
    # an option of probability 0 counts as exp(-LOGIT_CLIP) before scaling: the gold's NLL stays finite
    t = R.fit_option_temperature([np.array([1.0, 0.0])] * 3 + [np.array([0.0, 1.0])], [0, 0, 0, 0])
    assert np.isfinite(t) and R.TEMPERATURE_BOUNDS[0] <= t <= R.TEMPERATURE_BOUNDS[1]


# ---------------------------------------------------------------- degenerate fit sets


def test_degenerate_fit_sets_fall_back_as_documented():
    confidence = np.array([0.55, 0.6, 0.7, 0.9])
    grid = np.array([0.1, 0.5, 0.8])
    # a single class: platt, isotonic and histogram map everything to it (platt within the logit clip)
    for label in (True, False):
        y = np.full(4, label)
        assert R.fit_platt(confidence, y) == (0.0, R.LOGIT_CLIP if label else -R.LOGIT_CLIP)
        np.testing.assert_allclose(R.fit_isotonic(confidence, y)(grid), float(label))
        np.testing.assert_allclose(R.histogram_scale(grid, *R.fit_histogram(confidence, y, 3)), float(label))
    # all right at confidences above 0.5: the NLL falls as T falls, so T is the lower bound
    assert R.fit_temperature(confidence, np.ones(4, bool)) == pytest.approx(R.TEMPERATURE_BOUNDS[0], rel=1e-6)
    # one distinct confidence, both classes: the constant map to the accuracy
    same, y = np.full(4, 0.7), np.array([True, False, False, True])
    assert R.fit_platt(same, y) == (0.0, 0.0)
    for values in (R.platt_scale(grid, *R.fit_platt(same, y)), R.fit_isotonic(same, y)(grid),
                   R.histogram_scale(grid, *R.fit_histogram(same, y, 3))):
        np.testing.assert_allclose(values, 0.5)
    # classes separated by the confidence: no maximum-likelihood Platt fit; the constant map to the accuracy
    a, b = R.fit_platt(confidence, [False, False, True, True])
    assert a == 0.0 and b == pytest.approx(0.0)
    # a NLL that does not depend on T: T = 1
    assert R.fit_temperature(np.full(3, 0.5), [True, False, True]) == 1.0
    assert R.fit_option_temperature([np.full(3, 1 / 3), np.full(2, 0.5)], [0, 1]) == 1.0
    # no rows: the identity
    assert R.fit_temperature([], []) == 1.0 and R.fit_option_temperature([], []) == 1.0
    assert R.fit_platt([], []) == (1.0, 0.0)
    np.testing.assert_allclose(R.fit_isotonic([], [])(grid), grid)
    np.testing.assert_allclose(R.histogram_scale(grid, *R.fit_histogram([], [], 3)), grid)


def test_a_single_item_is_scored_by_the_identity(tmp_path, caplog):
    table = clm_table(n_items=1, per_item=20)
    with caplog.at_level("WARNING"):
        out = run(tmp_path, table)
    assert "no rows to fit on" in caplog.text
    for method in ALL:
        rows = rows_of(out, method)
        assert rows["fold"].tolist() == [0] * 20
        np.testing.assert_allclose(rows["confidence"], table["confidence"], rtol=1e-9)


# ---------------------------------------------------------------- recalibration never sees its evaluation items


def test_k_fold_maps_never_see_their_own_fold(tmp_path):
    table = clm_table(n_items=15, per_item=12)
    base = run(tmp_path, table, name="base")
    folds = rows_of(base, "temperature")["fold"].to_numpy()
    for k in range(5):
        changed = table.copy()
        changed.loc[folds == k, "correct"] = ~changed.loc[folds == k, "correct"]
        out = run(tmp_path, changed, name=f"fold{k}")
        for method in ALL:
            mine, theirs = rows_of(base, method), rows_of(out, method)
            np.testing.assert_array_equal(theirs["confidence"][folds == k], mine["confidence"][folds == k])
        # the other folds' maps were fitted on the changed labels: their rows move
        others = folds != k
        assert any(not np.allclose(rows_of(out, m)["confidence"][others], rows_of(base, m)["confidence"][others])
                   for m in ALL)


def test_k_fold_multiple_choice_never_sees_its_own_fold(tmp_path):
    table = mc_table(50)
    base = run(tmp_path, table, name="base", folds=3)
    folds = rows_of(base, "platt")["fold"].to_numpy()
    changed = table.copy()
    at = folds == 1
    changed.loc[at, ["gold", "correct"]] = other_gold(changed[at])
    out = run(tmp_path, changed, name="changed", folds=3)
    for method in ALL:
        np.testing.assert_array_equal(rows_of(out, method)["confidence"][at], rows_of(base, method)["confidence"][at])
    mine, theirs = rows_of(base, "temperature"), rows_of(out, "temperature")
    for p, q in zip(mine["option_probs"][at], theirs["option_probs"][at]):
        np.testing.assert_array_equal(p, q)
    assert not np.allclose(mine["confidence"][~at], theirs["confidence"][~at])


def test_val_split_maps_never_see_the_test_items(tmp_path):
    table = pd.concat([mc_table(40, seed=1), mc_table(30, seed=2, prefix="v")], ignore_index=True)
    data = data_table(table, val_items=[f"v/{i}" for i in range(30)])
    base = run(tmp_path, table, data, name="base")
    assert set(base["item_id"]) == {f"q/{i}" for i in range(40)} and set(base["fold"].dropna()) == {0}
    test = table["item_id"].str.startswith("q/")
    flipped = table.copy()
    flipped.loc[test, ["gold", "correct"]] = other_gold(flipped[test])
    out = run(tmp_path, flipped, data, name="test_changed")
    np.testing.assert_array_equal(out["confidence"], base["confidence"])
    np.testing.assert_array_equal(out["temperature"], base["temperature"])
    for mine, theirs in zip(base["option_probs"], out["option_probs"]):
        assert (mine is None and theirs is None) or np.array_equal(mine, theirs)
    assert not out["correct"].equals(base["correct"])  # the labels did change
    # the val labels are what the maps are fitted on
    flipped = table.copy()
    flipped.loc[~test, "gold"] = flipped.loc[~test, "pred"]
    flipped.loc[~test, "correct"] = True
    moved = run(tmp_path, flipped, data, name="val_changed")
    for method in ALL:
        assert not np.allclose(rows_of(moved, method)["confidence"], rows_of(base, method)["confidence"])


# ---------------------------------------------------------------- multiple choice


def test_temperature_keeps_multiple_choice_accuracy(tmp_path):
    table = mc_table(80)
    out = run(tmp_path, table, folds=4)
    none, scaled = rows_of(out, "none"), rows_of(out, "temperature")
    assert (scaled["temperature"] != 1.0).all()
    assert scaled["correct"].tolist() == none["correct"].tolist() == table["correct"].tolist()
    assert scaled["pred"].tolist() == none["pred"].tolist()
    for probs, original, pred, confidence in zip(scaled["option_probs"], table["option_probs"], scaled["pred"],
                                                 scaled["confidence"]):
        assert len(probs) == len(original) and probs.sum() == pytest.approx(1.0, abs=1e-12)
        assert int(np.argmax(probs)) == pred and confidence == probs.max()
        assert not np.allclose(probs, original)
    for probs, original in zip(none["option_probs"], table["option_probs"]):
        np.testing.assert_array_equal(probs, original)
    for method in ("platt", "isotonic", "histogram"):  # top-label maps: no option distribution
        assert rows_of(out, method)["option_probs"].isna().all()
    # a temperature row is softmax(log p / T) of its own T
    row = scaled.iloc[3]
    powered = table["option_probs"].iloc[3] ** (1 / row["temperature"])
    np.testing.assert_allclose(row["option_probs"], powered / powered.sum(), rtol=1e-10)


# ---------------------------------------------------------------- folds


def test_folds_are_grouped_by_item_and_dealt_as_the_contract_says(tmp_path):
    table = clm_table(n_items=13, per_item=9).sample(frac=1.0, random_state=3).reset_index(drop=True)
    out = run(tmp_path, table, seed=7, folds=4)
    # the recipe, written out: sorted unique ids, shuffled by default_rng(seed), dealt round robin
    items = sorted(set(table["item_id"]))
    order = np.random.default_rng(7).permutation(np.array(items, dtype=object))
    expected = {item: k % 4 for k, item in enumerate(order)}
    assert R.fold_assignment(table["item_id"], 4, 7).tolist() == [expected[i] for i in table["item_id"]]
    for method in ALL:
        rows = rows_of(out, method)
        assert rows["item_id"].tolist() == table["item_id"].tolist()  # the input's row order
        assert rows["fold"].tolist() == [expected[i] for i in rows["item_id"]]
        assert (rows.groupby("item_id")["fold"].nunique() == 1).all()
    assert sorted(pd.Series(expected).value_counts().tolist()) == [3, 3, 3, 4]
    # fewer items than folds: one fold per item
    few = run(tmp_path, clm_table(n_items=3, per_item=4), name="few", folds=5)
    assert sorted(rows_of(few, "platt").groupby("item_id")["fold"].first()) == [0, 1, 2]
    # the fold of an item depends on the seed, not on the other methods
    assert R.fold_assignment(table["item_id"], 4, 8).tolist() != R.fold_assignment(table["item_id"], 4, 7).tolist()


# ---------------------------------------------------------------- the table


def test_layout_and_provenance(tmp_path):
    table = pd.concat([mc_table(30, method="continuation_sum"), mc_table(30, seed=5, method="continuation_min")],
                      ignore_index=True)
    out = run(tmp_path, table, methods=["histogram", "temperature", "isotonic"], folds=3, histogram_bins=4)
    blocks = out[["method", "recalibration"]].drop_duplicates().values.tolist()
    assert blocks == [[m, r] for m in ("continuation_sum", "continuation_min")
                      for r in ("none", "temperature", "isotonic", "histogram")]
    assert len(out) == 2 * 4 * 30
    assert list(out.columns) == ["item_id", "method", "recalibration", "confidence", "correct", "subject",
                                 "option_probs", "gold", "pred", "letter_mass", "temperature", "fold"]
    assert out["temperature"].dtype == np.float64 and out["fold"].dtype == "Int64"
    none = out["recalibration"] == "none"
    assert out.loc[none, "fold"].isna().all() and out.loc[~none, "fold"].notna().all()
    assert out.loc[out["recalibration"] == "temperature", "temperature"].notna().all()
    assert out.loc[out["recalibration"] != "temperature", "temperature"].isna().all()
    for method in ("continuation_sum", "continuation_min"):
        rows = out[(out["method"] == method) & none].reset_index(drop=True)
        original = table[table["method"] == method].reset_index(drop=True)
        pd.testing.assert_series_equal(rows["confidence"], original["confidence"])
        assert rows["subject"].tolist() == original["subject"].tolist()
    provenance = read_provenance(tmp_path / "out.parquet")
    assert {k: provenance[k] for k in ("stage", "methods", "folds", "seed", "histogram_bins", "fit")} == {
        "stage": "recalibrate", "methods": ["temperature", "isotonic", "histogram"], "folds": 3, "seed": 0,
        "histogram_bins": 4, "fit": "k-fold"}
    assert provenance["input"]["marker"] == "out" and provenance["input"]["stage"] == "extract_confidence"
    # no methods: the none rows alone; a held-out split: "val split"
    assert set(run(tmp_path, table, name="plain", methods=[])["recalibration"]) == {"none"}
    run(tmp_path, table, data_table(table, val_items=["q/0", "q/1"]), name="val")
    assert read_provenance(tmp_path / "val.parquet")["fit"] == "val split"


def test_a_task_table_without_split_counts_as_all_test(tmp_path):
    table = clm_table(6, 5)
    with_split = run(tmp_path, table, name="a")
    without = run(tmp_path, table, pd.DataFrame({"item_id": [f"doc/{i}" for i in range(6)], "text": "x"}), name="b")
    pd.testing.assert_frame_equal(with_split, without)


def test_deterministic_for_a_seed(tmp_path):
    table = clm_table(20, 6)
    first, again = run(tmp_path, table, name="a", seed=3), run(tmp_path, table, name="b", seed=3)
    pd.testing.assert_frame_equal(first, again)
    other = run(tmp_path, table, name="c", seed=4)
    assert not first["fold"].equals(other["fold"])


# ---------------------------------------------------------------- errors


def _bad_inputs(tmp_path, case):
    table, data, options = clm_table(6, 3), None, {}
    if case == "missing column":
        table = table.drop(columns="correct")
    elif case == "unknown method":
        options = {"methods": ["temperature", "beta"]}
    elif case == "repeated method":
        options = {"methods": ["platt", "platt"]}
    elif case == "folds < 2":
        options = {"folds": 1}
    elif case == "histogram_bins < 1":
        options = {"histogram_bins": 0}
    elif case == "both splits":
        data = pd.DataFrame({"item_id": [f"doc/{i}" for i in range(6)] + ["doc/2"], "split": ["test"] * 6 + ["val"]})
    elif case == "bad split":
        data = data_table(table).assign(split=["test"] * 5 + ["train"])
    elif case == "no val row of a method":
        table = pd.concat([table, table[table["item_id"] != "doc/0"].assign(method="other")], ignore_index=True)
        data = data_table(table, val_items=["doc/0"])
    elif case == "unknown item":
        data = data_table(table).iloc[1:]
    elif case == "confidence out of range":
        table.loc[4, "confidence"] = 1.5
    elif case == "option_probs on some rows":
        table = mc_table(6)
        table.loc[2, "option_probs"] = None
    elif case == "gold out of range":
        table = mc_table(6)
        table.loc[1, "gold"] = 9
    return table, data, options


ERRORS = {
    "missing column": [".conf.parquet", "missing columns ['correct']"],
    "unknown method": ["unknown recalibration method(s) ['beta']", "temperature"],
    "repeated method": ["must not repeat"],
    "folds < 2": ["folds", ">= 2", "1"],
    "histogram_bins < 1": ["histogram_bins", ">= 1"],
    "both splits": [".data.parquet", "'doc/2'", "both splits", "'split'"],
    "bad split": [".data.parquet", "'split'", "'train'"],
    "no val row of a method": [".data.parquet", "has val rows", "'other'"],
    "unknown item": [".conf.parquet", "'doc/0'", "not in the task table"],
    "confidence out of range": [".conf.parquet", "'max_prob'", "'confidence'", "1.5"],
    "option_probs on some rows": [".conf.parquet", "'option_probs'", "'q/2'"],
    "gold out of range": [".conf.parquet", "'gold'", "'q/1'", "9"],
}


@pytest.mark.parametrize("case", ERRORS)
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, case):
    table, data, options = _bad_inputs(tmp_path, case)
    with pytest.raises(ValueError) as error:
        run(tmp_path, table, data, **options)
    for fragment in ERRORS[case]:
        assert fragment in str(error.value), str(error.value)
    assert not (tmp_path / "out.parquet").exists()
