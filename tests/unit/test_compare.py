"""Tests of the paired bootstrap comparisons (workflow_scripts.compare)."""
import calibration
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import relplot

from workflow_scripts import compare as C
from workflow_scripts import metric_table as M
from workflow_scripts import scoring
from workflow_scripts.bootstrap import resample_counts, smoothed_per_unit
from workflow_scripts.metrics import expected_calibration_error, static_calibration_error
from workflow_scripts.scoring import score
from workflow_scripts.tables import read_table, write_table

N_BINS = 10


def mc_rows(seed: int, n: int = 120, n_options: int = 4, method: str = "letters", recalibration: str = "none",
            subjects=("algebra", "biology", "chemistry")) -> pd.DataFrame:
    """Multiple-choice rows with continuous option probabilities (no value on a bin edge in practice)."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(n_options, 0.8), size=n)
    gold = np.array([rng.choice(n_options, p=p) for p in probs])
    return pd.DataFrame({
        "item_id": [f"q{i:03d}" for i in range(n)], "method": method, "recalibration": recalibration,
        "confidence": probs.max(axis=1), "correct": probs.argmax(axis=1) == gold,
        "subject": [subjects[i % len(subjects)] for i in range(n)],
        "option_probs": list(probs), "gold": gold,
    })


def clm_rows(seed: int, n_docs: int = 12, method: str = "max_prob") -> pd.DataFrame:
    """CLM rows: documents of different lengths, many token rows each, no subject."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 60, n_docs)
    doc = np.repeat(np.arange(n_docs), lengths)
    conf = rng.beta(2, 2, len(doc))
    return pd.DataFrame({"item_id": [f"doc{d}" for d in doc], "method": method, "recalibration": "none",
                         "confidence": conf, "correct": rng.uniform(size=len(doc)) < conf ** 1.5})


def write_run(tmp_path, task, model, table, revision="main"):
    path = tmp_path / f"{task}-{model}-{revision}.parquet"
    write_table(table.reset_index(drop=True), path, {"stage": "recalibrate"})
    return {"task": task, "model": model, "revision": revision, "path": str(path)}


def pair(a, b, comparison="consecutive_sizes", revision="main"):
    return {"comparison": comparison, "a": {"model": a, "revision": revision}, "b": {"model": b, "revision": revision}}


def run_compare(tmp_path, runs, pairs, **kwargs) -> pd.DataFrame:
    out = tmp_path / "comparisons.csv"
    C.compare(runs, pairs, out, **{"n_bins": N_BINS, "n_bootstrap": 300, "seed": 0, **kwargs})
    return pd.read_csv(out)


def side_and_counts(rows, n_bootstrap=200, seed=0):
    side = C.side_statistics(rows, N_BINS)
    codes, _ = pd.factorize(side.unit_strata, use_na_sentinel=False)
    return side, resample_counts(codes, n_bootstrap, seed)


def materialised(rows: pd.DataFrame, side: C.Side, counts_row: np.ndarray) -> pd.DataFrame:
    """The rows of one resample: every row of unit u repeated as often as u is drawn."""
    unit = pd.Index(side.units).get_indexer(rows["item_id"])
    order = np.argsort(unit, kind="stable")
    starts = np.searchsorted(unit[order], np.arange(len(side.units)))
    ends = np.searchsorted(unit[order], np.arange(len(side.units)), side="right")
    picks = np.concatenate([np.tile(order[s:e], int(c)) for s, e, c in zip(starts, ends, counts_row)])
    return rows.iloc[picks]


# ---------------------------------------------------------------- identical runs


def test_identical_runs_give_zero_difference_unit_intervals_and_q_one(tmp_path):
    table = pd.concat([mc_rows(0), mc_rows(0, recalibration="temperature")])
    runs = [write_run(tmp_path, "mmlu", "small", table), write_run(tmp_path, "mmlu", "large", table)]
    result = run_compare(tmp_path, runs, [pair("small", "large")])
    assert list(result.columns) == list(C.COLUMNS)
    row = result[result["comparison"] == "consecutive_sizes"]
    assert len(row) == 1 and row["n"].item() == 120
    for metric in C.COMPARED_METRICS:
        assert row[f"{metric}_a"].item() == row[f"{metric}_b"].item()
        assert row[f"{metric}_diff"].item() == 0.0
        assert row[f"{metric}_ci_low"].item() == 0.0 and row[f"{metric}_ci_high"].item() == 0.0
        assert row[f"{metric}_p"].item() == 1.0 and row[f"{metric}_q"].item() == 1.0


# ---------------------------------------------------------------- resampled values vs materialised resamples


def test_resampled_metrics_equal_plain_metrics_of_materialised_resamples():
    rows = mc_rows(1, n=90)
    side, counts = side_and_counts(rows, n_bootstrap=60)
    values = side.resampled(counts)
    bandwidth = side.rows.smooth[1]  # the full sample's, held in the resamples
    for b in range(len(counts)):
        drawn = materialised(rows, side, counts[b])
        conf, hit = drawn["confidence"].to_numpy(), drawn["correct"].to_numpy()
        assert values["accuracy"][b] == pytest.approx(hit.mean(), abs=1e-12)
        assert values["ece"][b] == pytest.approx(expected_calibration_error(conf, hit, N_BINS), abs=1e-12)
        kumar = calibration.lower_bound_scaling_ce(
            np.stack(drawn["option_probs"].to_list()), drawn["gold"].to_numpy(), p=1, debias=False, num_bins=N_BINS,
            binning_scheme=calibration.get_equal_prob_bins, mode="marginal")
        assert values["sce"][b] == pytest.approx(kumar, abs=1e-12)
        held = relplot.metrics.smECE_sigma(conf, hit.astype(float), bandwidth)
        assert values["smece"][b] == pytest.approx(held, abs=1e-12)


def test_resampled_metrics_of_multi_row_units_equal_materialised_resamples():
    rows = clm_rows(2)
    side, counts = side_and_counts(rows, n_bootstrap=40)
    values = side.resampled(counts)
    bandwidth = side.rows.smooth[1]
    assert np.isnan(values["sce"]).all()
    for b in range(len(counts)):
        drawn = materialised(rows, side, counts[b])
        conf, hit = drawn["confidence"].to_numpy(), drawn["correct"].to_numpy().astype(float)
        assert values["accuracy"][b] == pytest.approx(hit.mean(), abs=1e-12)
        assert values["ece"][b] == pytest.approx(expected_calibration_error(conf, hit, N_BINS), abs=1e-12)
        assert values["smece"][b] == pytest.approx(relplot.metrics.smECE_sigma(conf, hit, bandwidth), abs=1e-12)


@pytest.mark.parametrize("rows", [mc_rows(18, n=60), clm_rows(19)], ids=["questions", "documents"])
def test_every_compared_metric_resampled_is_its_value_on_the_materialised_resample(rows):
    # Generic over the metrics table: a metric given a resampled form is checked here with no test of its own.
    side, counts = side_and_counts(rows, n_bootstrap=15)
    values = side.resampled(counts)
    bandwidth = side.rows.smooth[1]  # smECE's resamples hold the full sample's bandwidth
    for b in range(len(counts)):
        drawn = materialised(rows, side, counts[b])
        conf, hit = drawn["confidence"].to_numpy(), drawn["correct"].to_numpy()
        options = {"option_probs": drawn["option_probs"], "gold": drawn["gold"]} if "gold" in drawn else {}
        scored = M.ScoredRows(conf, hit, N_BINS, **options,
                              smooth=(relplot.metrics.smECE_sigma(conf, hit.astype(float), bandwidth), bandwidth))
        for metric in C.COMPARED_METRICS:
            assert values[metric][b] == pytest.approx(M.METRICS[metric].value(scored), abs=1e-12, nan_ok=True)


@pytest.mark.parametrize("sigma", [0.3, 0.05, 0.0117, 0.006, 0.003])
def test_per_unit_smoothing_equals_relplots_kernel_on_each_units_rows(sigma):
    # Small bandwidths take relplot's finer grid and more evaluation points (the map is built in chunks).
    rng = np.random.default_rng(11)
    conf = np.concatenate([[0.0, 1.0, 0.5], rng.uniform(size=297)])
    residual = conf - (rng.uniform(size=300) < conf)
    unit = rng.integers(0, 7, 300)
    smoothed, density = smoothed_per_unit(conf, residual, unit, 7, sigma)
    t = np.linspace(0, 1, max(round(10 / sigma), relplot.config.smECE_mesh_pts))
    kernel = relplot.kernels.ReflectedGaussianKernel(sigma)
    for u in range(7):
        mine = unit == u
        np.testing.assert_allclose(smoothed[u], kernel.apply(conf[mine], residual[mine], t), rtol=0, atol=1e-10)
        assert density[u] == pytest.approx(kernel.apply(conf[mine], np.ones(mine.sum()), t).sum(), rel=1e-12)


def test_point_estimates_are_the_plain_full_sample_metrics():
    rows = mc_rows(3)
    side = C.side_statistics(rows, N_BINS)
    conf, hit = rows["confidence"].to_numpy(), rows["correct"].to_numpy()
    assert side.point["accuracy"] == pytest.approx(hit.mean())
    assert side.point["ece"] == pytest.approx(expected_calibration_error(conf, hit, N_BINS))
    assert side.point["smece"] == pytest.approx(relplot.smECE(conf, hit.astype(float)))
    assert side.point["sce"] == pytest.approx(calibration.lower_bound_scaling_ce(
        np.stack(rows["option_probs"].to_list()), rows["gold"].to_numpy(), p=1, debias=False, num_bins=N_BINS,
        binning_scheme=calibration.get_equal_prob_bins, mode="marginal"))
    # Drawing every unit once reproduces the full sample.
    once = side.resampled(np.ones((1, len(side.units))))
    for metric in C.COMPARED_METRICS:
        assert once[metric][0] == pytest.approx(side.point[metric], abs=1e-12)


# ---------------------------------------------------------------- one metrics table for score and compare


def score_and_compare(tmp_path, runs, pairs, n_bootstrap=50):
    """Every run's micro summary rows from score, indexed by (task, model, method, recalibration), and compare's
    table of `pairs`."""
    summaries = []
    for run in runs:
        out = tmp_path / "scored" / f"{run['task']}-{run['model']}"
        paths = [out / f"{name}.parquet" for name in ("summary", "bins", "sweep", "subjects", "curves")]
        score(run["path"], *paths, task=run["task"], model=run["model"], revision=run["revision"], step=None,
              epoch=None, n_bins=N_BINS, n_bootstrap=n_bootstrap, seed=0)
        summaries.append(read_table(paths[0]))
    summary = pd.concat(summaries)
    summary = summary[summary["aggregation"] == "micro"].set_index(["task", "model", "method", "recalibration"])
    return summary, run_compare(tmp_path, runs, pairs, n_bootstrap=n_bootstrap)


def test_compare_reports_the_metrics_of_the_table_that_have_a_resampled_form_at_scores_values(tmp_path):
    assert C.COMPARED_METRICS == tuple(sorted(name for name, metric in M.METRICS.items() if metric.resampled))
    mmlu = pd.concat([mc_rows(12), mc_rows(12, recalibration="temperature"),
                      mc_rows(12, recalibration="platt").assign(option_probs=None)])
    runs = [write_run(tmp_path, "mmlu", "a", mmlu), write_run(tmp_path, "mmlu", "b", mc_rows(13)),
            write_run(tmp_path, "pile", "a", clm_rows(14)), write_run(tmp_path, "pile", "b", clm_rows(15))]
    summary, result = score_and_compare(tmp_path, runs, [pair("a", "b")])
    assert len(result) == 4  # a against b on both tasks, and a's two recalibrations of mmlu
    for _, row in result.iterrows():
        for side in ("a", "b"):
            scored = summary.loc[(row["task"], row[f"model_{side}"], row["method"], row[f"recalibration_{side}"])]
            for metric in C.COMPARED_METRICS:  # bit for bit (NaN: SCE without option_probs)
                values = [row[f"{metric}_{side}"], scored[metric]]
                assert values[0] == values[1] or np.isnan(values).all()
    assert result["sce_a"].notna().sum() == 3 and result["sce_b"].notna().sum() == 2


def test_a_metric_of_the_table_reaches_score_and_compare(tmp_path, monkeypatch):
    # The table's smECE replaced by the largest confidence, the same on every resample: score's column,
    # compare's values and compare's resamples all follow the table.
    def largest(rows):
        return float(rows.confidence.max())

    def resampled(rows):
        return lambda counts: np.full(len(counts), largest(rows))

    monkeypatch.setitem(M.METRICS, "smece", M.Metric(largest, resampled))
    tables = {"a": mc_rows(16), "b": mc_rows(17)}
    runs = [write_run(tmp_path, "mmlu", model, table) for model, table in tables.items()]
    summary, result = score_and_compare(tmp_path, runs, [pair("a", "b")])
    for model, table in tables.items():
        assert summary.loc[("mmlu", model, "letters", "none"), "smece"] == table["confidence"].max()
        assert result[f"smece_{model}"].item() == table["confidence"].max()
    assert result["smece_ci_low"].item() == result["smece_ci_high"].item() == result["smece_diff"].item()


# ---------------------------------------------------------------- SCE, hand-worked
#
#   item  option_probs          gold
#   1     [0.75, 0.25]          0
#   2     [0.15, 0.55, 0.30]    1
#   3     [0.65, 0.05, 0.30]    2
#
# position 0 (items 1-3): p 0.75 (bin 7, y 1), 0.15 (bin 1, y 0), 0.65 (bin 6, y 0) -> (0.25 + 0.15 + 0.65) / 3 = 0.35
# position 1 (items 1-3): p 0.25 (bin 2, y 0), 0.55 (bin 5, y 1), 0.05 (bin 0, y 0) -> (0.25 + 0.45 + 0.05) / 3 = 0.25
# position 2 (items 2-3): p 0.30, 0.30 (one bin, y 0 and 1)                           -> |1 - 0.6| / 2          = 0.20
# SCE = (0.35 + 0.25 + 0.20) / 3 = 0.8 / 3
SCE_PROBS = [[0.75, 0.25], [0.15, 0.55, 0.30], [0.65, 0.05, 0.30]]
SCE_GOLD = [0, 1, 2]


def test_sce_hand_worked_with_items_of_fewer_options():
    assert static_calibration_error(SCE_PROBS, SCE_GOLD, N_BINS) == pytest.approx(0.8 / 3)
    rows = pd.DataFrame({"item_id": [1, 2, 3], "confidence": [0.75, 0.55, 0.65], "correct": [True, True, False],
                         "option_probs": SCE_PROBS, "gold": SCE_GOLD})
    side = C.side_statistics(rows, N_BINS)
    assert side.point["sce"] == pytest.approx(0.8 / 3)
    assert side.resampled(np.ones((1, 3)))["sce"][0] == pytest.approx(0.8 / 3)
    # Item 1 drawn 3 times: position 2 has no item, so SCE averages positions 0 and 1 only:
    # position 0: bin 7: 3 * |1 - 0.75| -> 0.75 / 3 = 0.25; position 1: bin 2: 3 * 0.25 -> 0.25.
    assert side.resampled(np.array([[3.0, 0.0, 0.0]]))["sce"][0] == pytest.approx(0.25)


def test_sce_needs_option_probs_on_every_row():
    rows = pd.DataFrame({"item_id": [1, 2], "confidence": [0.75, 0.55], "correct": [True, True],
                         "option_probs": [[0.75, 0.25], None], "gold": [0, 1]})
    with pytest.raises(ValueError, match="option_probs and gold on every row"):
        C.side_statistics(rows, N_BINS)
    assert np.isnan(C.side_statistics(rows.assign(option_probs=None), N_BINS).point["sce"])


# ---------------------------------------------------------------- pairing


def test_both_sides_see_the_same_resamples(tmp_path):
    # Every item wrong, confidences inside bins with room for the shift: ECE = mean confidence, so the
    # shifted run's ECE exceeds the first's by exactly 0.01 in every resample that both runs share.
    rng = np.random.default_rng(4)
    n = 150
    conf = (rng.integers(1, 9, n) + rng.uniform(0.1, 0.8, n)) / 10
    base = pd.DataFrame({"item_id": np.arange(n), "method": "letters", "recalibration": "none",
                         "confidence": conf, "correct": False})
    shifted = base.assign(confidence=conf + 0.01)
    runs = [write_run(tmp_path, "mmlu", "a", base), write_run(tmp_path, "mmlu", "b", shifted)]
    row = run_compare(tmp_path, runs, [pair("a", "b")]).iloc[0]
    assert row["ece_diff"] == pytest.approx(0.01)
    assert row["ece_ci_low"] == pytest.approx(0.01, abs=1e-12)
    assert row["ece_ci_high"] == pytest.approx(0.01, abs=1e-12)
    assert row["ece_p"] == pytest.approx(2 / 301) and row["accuracy_p"] == 1.0
    # Resampling the two runs independently would give a wide interval.
    side_a, counts = side_and_counts(base, n_bootstrap=300, seed=0)
    side_b, other = side_and_counts(shifted, n_bootstrap=300, seed=1)
    independent = side_b.resampled(other)["ece"] - side_a.resampled(counts)["ece"]
    low, high = np.quantile(independent, [0.025, 0.975])
    assert high - low > 0.02


def test_multi_row_units_are_resampled_whole(tmp_path):
    # Document x: 3 rows, all correct; document y: 5 rows, all wrong. Resamples hold xx, yy or xy, so the
    # accuracy of a resample is 1, 0 or 3/8; resampling rows would give other values.
    rows = pd.DataFrame({"item_id": ["x"] * 3 + ["y"] * 5, "method": "max_prob", "recalibration": "none",
                         "confidence": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], "correct": [True] * 3 + [False] * 5})
    side, counts = side_and_counts(rows, n_bootstrap=200)
    assert counts.shape == (200, 2) and (counts.sum(axis=1) == 2).all()
    accuracy = np.round(side.resampled(counts)["accuracy"], 12)
    assert set(accuracy) == {0.0, 0.375, 1.0}
    runs = [write_run(tmp_path, "pile", "a", rows), write_run(tmp_path, "pile", "b", rows)]
    assert run_compare(tmp_path, runs, [pair("a", "b")])["n"].tolist() == [2]


def test_mismatched_item_sets_raise_naming_both_runs(tmp_path):
    runs = [write_run(tmp_path, "mmlu", "small", mc_rows(5)), write_run(tmp_path, "mmlu", "large", mc_rows(5)[1:])]
    with pytest.raises(ValueError, match=r"small main \(none\) and large main \(none\), task 'mmlu', "
                                         r"method 'letters' hold different item_ids.*1 only in the first.*q000"):
        run_compare(tmp_path, runs, [pair("small", "large")])


# ---------------------------------------------------------------- p- and q-values


def test_bootstrap_p_value_hand_worked():
    # B = 4: #{d <= 0} = 1, #{d >= 0} = 3 -> 2 * min(2/5, 4/5) = 0.8
    assert C.bootstrap_p_value([1.0, 2.0, 3.0, -1.0]) == pytest.approx(0.8)
    # all above 0: 2 * (1 + 0) / 5
    assert C.bootstrap_p_value([1.0, 2.0, 3.0, 4.0]) == pytest.approx(0.4)
    assert C.bootstrap_p_value([0.0, 0.0]) == 1.0
    assert np.isnan(C.bootstrap_p_value([np.nan, np.nan]))


def test_benjamini_hochberg_hand_worked():
    # finite p sorted: 0.01, 0.03, 0.04, 0.5 (m = 4); p * m / rank: 0.04, 0.06, 0.0533, 0.5;
    # running minimum from the top: 0.04, 0.0533, 0.0533, 0.5
    q = C.benjamini_hochberg([0.04, 0.01, np.nan, 0.5, 0.03])
    assert q[[0, 1, 3, 4]] == pytest.approx([0.16 / 3, 0.04, 0.5, 0.16 / 3])
    assert np.isnan(q[2])


def hand_bh(p):
    p = np.asarray(p, dtype=float)
    q = np.full(len(p), np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite])]
    m = len(order)
    running = 1.0
    for rank in range(m, 0, -1):
        running = min(running, p[order[rank - 1]] * m / rank)
        q[order[rank - 1]] = running
    return q


def test_a_clearly_different_pair_is_significant_and_q_is_bh_over_the_table(tmp_path):
    rng = np.random.default_rng(6)
    n = 150
    calibrated_conf = rng.uniform(0.3, 1.0, n)
    calibrated = pd.DataFrame({"item_id": np.arange(n), "method": "letters", "recalibration": "none",
                               "confidence": calibrated_conf, "correct": rng.uniform(size=n) < calibrated_conf})
    overconfident = calibrated.assign(confidence=0.99, correct=rng.uniform(size=n) < 0.4)
    tables = {"good": calibrated, "bad": overconfident, "good2": calibrated.assign(
        correct=rng.uniform(size=n) < calibrated_conf)}
    runs = [write_run(tmp_path, "mmlu", name, table) for name, table in tables.items()]
    result = run_compare(tmp_path, runs, [pair("good", "bad"), pair("good", "good2"), pair("good2", "bad")])
    row = result.iloc[0]
    assert row["ece_diff"] > 0.4 and row["ece_ci_low"] > 0.3
    assert row["ece_p"] == pytest.approx(2 / 301) and row["ece_q"] < 0.05
    assert row["smece_q"] < 0.05 and row["accuracy_q"] < 0.05
    assert np.isnan(row["sce_p"]) and np.isnan(row["sce_q"])
    for metric in C.COMPARED_METRICS:
        np.testing.assert_allclose(result[f"{metric}_q"], hand_bh(result[f"{metric}_p"]), equal_nan=True)


# ---------------------------------------------------------------- the table


def test_pairs_per_task_skips_and_recalibration_pairs(tmp_path):
    mmlu = pd.concat([mc_rows(7, method=m, recalibration=r)
                      for m in ("letters", "options") for r in ("none", "temperature")])
    platt = mc_rows(7, recalibration="platt").assign(option_probs=None)
    runs = [write_run(tmp_path, "mmlu", "a", pd.concat([mmlu, platt])),
            write_run(tmp_path, "mmlu", "b", mmlu[mmlu["method"] == "letters"]),
            write_run(tmp_path, "pile", "a", clm_rows(8))]
    result = run_compare(tmp_path, runs, [pair("a", "b")])
    model = result[result["comparison"] == "consecutive_sizes"]
    assert model[["task", "method"]].values.tolist() == [["mmlu", "letters"]]  # pile lacks b; b lacks options
    assert (model[["recalibration_a", "recalibration_b"]] == "none").all().all()
    recal = result[result["comparison"] == C.RECALIBRATION]
    assert recal[["model_a", "method", "recalibration_b"]].values.tolist() == [
        ["a", "letters", "platt"], ["a", "letters", "temperature"], ["a", "options", "temperature"],
        ["b", "letters", "temperature"]]
    assert (recal["model_a"] == recal["model_b"]).all() and (recal["recalibration_a"] == "none").all()
    platt_row = recal[recal["recalibration_b"] == "platt"].iloc[0]
    assert np.isnan(platt_row["sce_b"]) and np.isnan(platt_row["sce_p"]) and np.isnan(platt_row["sce_q"])
    assert not np.isnan(platt_row["ece_p"])
    temperature = recal[recal["recalibration_b"] == "temperature"].iloc[0]
    assert temperature["accuracy_diff"] == 0.0 and temperature["accuracy_p"] == 1.0


def test_one_log_line_per_task(tmp_path, caplog):
    runs = [write_run(tmp_path, "mmlu", "a", mc_rows(9)), write_run(tmp_path, "mmlu", "b", mc_rows(10)),
            write_run(tmp_path, "pile", "a", clm_rows(8))]
    with caplog.at_level("INFO", logger="workflow_scripts.compare"):
        run_compare(tmp_path, runs, [pair("a", "b")], n_bootstrap=20)
    assert [r.getMessage() for r in caplog.records] == [
        "task mmlu: 1 comparisons", "task pile: 0 comparisons (1 model pairs skipped: a run is missing)"]


def test_no_bootstrap_gives_differences_without_intervals(tmp_path):
    runs = [write_run(tmp_path, "mmlu", "a", mc_rows(9)), write_run(tmp_path, "mmlu", "b", mc_rows(10))]
    row = run_compare(tmp_path, runs, [pair("a", "b")], n_bootstrap=0).iloc[0]
    assert row["ece_diff"] == pytest.approx(row["ece_b"] - row["ece_a"])
    assert np.isnan(row[["ece_ci_low", "ece_ci_high", "ece_p", "ece_q"]].to_numpy(dtype=float)).all()


# ---------------------------------------------------------------- a run at a time: the same table as a plain compare


def verbalized_rows(seed: int, letters: pd.DataFrame, unparsed: float) -> pd.DataFrame:
    """Verbalized rows of the items of `letters`: no option probabilities, a share `unparsed` of replies that did
    not parse (parsed false, no confidence)."""
    rng = np.random.default_rng(seed)
    parsed = rng.uniform(size=len(letters)) >= unparsed
    confidence = rng.uniform(0.3, 1.0, len(letters))
    return letters.assign(method="verbalized", confidence=np.where(parsed, confidence, np.nan),
                          correct=parsed & (rng.uniform(size=len(letters)) < confidence), option_probs=None,
                          parsed=parsed)


def write_run_in_row_groups(tmp_path, task, model, table, rows_per_group=64):
    """write_run, in row groups of `rows_per_group` rows (a group of a method and recalibration spans several)."""
    path = tmp_path / f"{task}-{model}-main.parquet"
    pq.write_table(pa.Table.from_pandas(table.reset_index(drop=True), preserve_index=False), path,
                   row_group_size=rows_per_group)
    return {"task": task, "model": model, "revision": "main", "path": str(path)}


def plain_group(table: pd.DataFrame, method: str, recalibration: str) -> tuple[pd.DataFrame, bool]:
    """The rows of a method and recalibration that have a confidence, and whether it had others."""
    rows = table[(table["method"] == method) & (table["recalibration"] == recalibration)]
    unparsed = rows["parsed"].eq(False) if "parsed" in rows else pd.Series(False, index=rows.index)
    return rows[~unparsed].reset_index(drop=True), bool(unparsed.any())


def plain_groups(table: pd.DataFrame) -> set[tuple[str, str]]:
    """The (method, recalibration) pairs that have rows with a confidence."""
    table = table[~table["parsed"].eq(False)] if "parsed" in table else table
    return set(table[["method", "recalibration"]].itertuples(index=False, name=None))


def plain_comparisons(runs, pairs, n_bootstrap: int, seed: int = 0) -> pd.DataFrame:
    """compare's table computed plainly: every table of a task read whole, every side from its rows at the time of
    its comparison, the resamples of each comparison drawn for it (resample_counts of its design)."""
    table_rows = []
    for task in dict.fromkeys(run["task"] for run in runs):
        tables = {(run["model"], run["revision"]): pd.read_parquet(run["path"]) for run in runs if run["task"] == task}
        groups = {key: plain_groups(table) for key, table in tables.items()}
        todo = []
        for p in pairs:
            a, b = ((p[side]["model"], p[side]["revision"]) for side in ("a", "b"))
            if a in tables and b in tables:
                methods = {m for m, r in groups[a] if r == "none"} & {m for m, r in groups[b] if r == "none"}
                todo += [(p["comparison"], m, a, "none", b, "none") for m in sorted(methods)]
        for key in tables:
            todo += [(C.RECALIBRATION, m, key, "none", key, r) for m, r in sorted(groups[key])
                     if r != "none" and (m, "none") in groups[key]]
        for comparison, method, a, rec_a, b, rec_b in todo:
            (rows_a, left_a), (rows_b, left_b) = (plain_group(tables[key], method, rec)
                                                  for key, rec in ((a, rec_a), (b, rec_b)))
            if left_a or left_b:
                items = set(rows_a["item_id"]) & set(rows_b["item_id"])
                rows_a, rows_b = rows_a[rows_a["item_id"].isin(items)], rows_b[rows_b["item_id"].isin(items)]
            side_a, side_b = C.side_statistics(rows_a, N_BINS), C.side_statistics(rows_b, N_BINS)
            codes, _ = pd.factorize(side_a.unit_strata, use_na_sentinel=False)
            counts = resample_counts(codes, n_bootstrap, seed)
            values_a, values_b = side_a.resampled(counts), side_b.resampled(counts)
            row = {"comparison": comparison, "task": task, "method": method, "model_a": a[0], "revision_a": a[1],
                   "recalibration_a": rec_a, "model_b": b[0], "revision_b": b[1], "recalibration_b": rec_b,
                   "n": len(side_a.units)}
            for metric in C.COMPARED_METRICS:
                d = values_b[metric] - values_a[metric]
                d = d[np.isfinite(d)]
                tail = (1.0 - C.LEVEL) / 2.0
                low, high = np.quantile(d, [tail, 1.0 - tail]) if len(d) else (np.nan, np.nan)
                row |= {f"{metric}_a": side_a.point[metric], f"{metric}_b": side_b.point[metric],
                        f"{metric}_diff": side_b.point[metric] - side_a.point[metric], f"{metric}_ci_low": low,
                        f"{metric}_ci_high": high, f"{metric}_p": C.bootstrap_p_value(d) if len(d) else np.nan}
            table_rows.append(row)
    table = pd.DataFrame(table_rows)
    for metric in C.COMPARED_METRICS:
        table[f"{metric}_q"] = C.benjamini_hochberg(table[f"{metric}_p"])
    return table[list(C.COLUMNS)]


@pytest.mark.parametrize("batch_rows", [2**20, 50], ids=["tables-read-whole", "a-group-at-a-time"])
def test_a_run_at_a_time_gives_the_table_of_a_plain_compare_holding_every_table(tmp_path, monkeypatch, batch_rows):
    # Two tasks of five and four runs: documents under three recalibrations, in row groups smaller than a
    # recalibration; questions in subjects with verbalized replies that did not all parse (one run without them).
    # Pairs: a chain, a star, a pair back to an earlier run, one twice, one with a run the task lacks. Tables of
    # more than scoring.BATCH_ROWS rows are read a group at a time (all of them at 50), smaller ones whole.
    monkeypatch.setattr(scoring, "BATCH_ROWS", batch_rows)
    runs = []
    for m in range(5):
        documents = clm_rows(40 + m, n_docs=15)
        confidence = documents["confidence"]
        table = pd.concat([documents, documents.assign(recalibration="temperature", confidence=confidence ** 1.1),
                           documents.assign(recalibration="platt", confidence=0.2 + 0.6 * confidence)])
        runs.append(write_run_in_row_groups(tmp_path, "pile", f"m{m}", table))
    for m in range(4):
        letters = pd.concat([mc_rows(50 + m, n=60), mc_rows(50 + m, n=60, recalibration="temperature")])
        verbalized = verbalized_rows(60 + m, letters, unparsed=0.1 * m)
        runs.append(write_run(tmp_path, "mmlu", f"m{m}", pd.concat([letters, verbalized]) if m != 2 else letters))
    pairs = [pair(f"m{i}", f"m{i + 1}") for i in range(4)] + [pair("m0", f"m{i}", "base") for i in (2, 3, 4)]
    pairs += [pair("m3", "m1", "back"), pair("m0", "m1"), pair("m1", "m9")]
    result = run_compare(tmp_path, runs, pairs, n_bootstrap=40)
    plain_csv = tmp_path / "plain.csv"
    plain_comparisons(runs, pairs, n_bootstrap=40).to_csv(plain_csv, index=False)
    # pile: 9 model pairs and 10 recalibrations; mmlu: 7 pairs of letters, 4 of verbalized, 7 recalibrations
    assert len(result) == 37 and (result["method"] == "verbalized").sum() == 7
    pd.testing.assert_frame_equal(result, pd.read_csv(plain_csv), check_exact=True)

