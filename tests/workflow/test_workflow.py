"""The whole workflow under Snakemake on a tiny real model: tables, figures, and what a change reruns."""
from __future__ import annotations

import copy

import pandas as pd
import pytest
from workflow_run import copy_run, copy_workflow, planned_jobs, snakemake, tiny_config, write_config

from workflow_scripts.tables import read_provenance

# The figure jobs of the tiny config that follow the summary (3 tasks), and the jobs that follow a change of
# every run's recalibrated tables (one score job per checkpoint scores all its tasks).
FIGURES = {"plot_reliability": 3, "plot_reliability_group": 3, "plot_summary": 1, "plot_summary_table": 1,
           "plot_recalibration": 1, "plot_risk_coverage": 3, "plot_metric_agreement": 1, "all": 1}
SCORING = {"score": 1, "summarize": 1, "compare": 1, **FIGURES}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_run, tiny_model_dir):
    """One complete run of the tiny config (a copy of conftest's tiny_run); the tests below inspect it and
    dry-run changes to it."""
    workdir = copy_run(tiny_run, tmp_path_factory.mktemp("workflow") / "wf")
    return workdir, tiny_config(tiny_model_dir)


def test_run_writes_the_contract_tables_and_figures(finished_run):
    workdir, _ = finished_run
    results = workdir / "results"
    summary = pd.read_csv(results / "metrics" / "summary.csv")
    expected_methods = {("prose", "max_prob"), ("facts", "first_token_prob"), ("facts", "seq_prob"),
                        ("geo", "option_softmax")}
    assert set(zip(summary["task"], summary["method"])) == expected_methods
    for column in ("n", "accuracy", "mean_confidence", "ece", "mce", "ace", "brier", "ece_ci_low", "ece_ci_high"):
        assert summary[column].notna().all(), column
    assert summary.set_index("task")["n"].to_dict()["geo"] == 6
    assert (summary["family"] == "tiny").all()
    pd.testing.assert_frame_equal(pd.read_parquet(results / "metrics" / "summary.parquet"), summary,
                                  check_dtype=False)
    assert set(summary["recalibration"]) == {"none", "temperature", "platt", "isotonic", "histogram"}
    assert set(summary["aggregation"]) == {"micro"}  # no task of two subjects
    # every recalibrated row is scored on all items (5-fold cross-fitting), its fitted T on temperature rows only
    assert summary.groupby(["task", "method"])["n"].nunique().eq(1).all()
    assert summary["temperature"].notna().tolist() == (summary["recalibration"] == "temperature").tolist()
    for column in ("smece", "ece_debiased", "rmsce", "nll", "aurc", "eaurc", "acc_at_coverage_50"):
        assert summary[column].notna().all(), column
    assert summary["sce"].notna().tolist() == \
        ((summary["task"] == "geo") & summary["recalibration"].isin(["none", "temperature"])).tolist()
    bins = pd.read_parquet(results / "metrics" / "reliability.parquet")
    assert bins.groupby(["task", "method", "recalibration"])["count"].sum().to_dict() == \
        summary.set_index(["task", "method", "recalibration"])["n"].to_dict()
    sweep = pd.read_parquet(results / "metrics" / "bin_sweep.parquet")
    assert sorted(set(sweep["n_bins"])) == [5, 10, 15, 20] and len(sweep) == 4 * len(summary)
    curves = pd.read_parquet(results / "metrics" / "curves.parquet")
    assert set(curves["curve"]) == {"smooth_reliability", "risk_coverage"}
    assert set(pd.read_parquet(results / "metrics" / "subjects.parquet")["task"]) == {"geo"}
    comparisons = pd.read_csv(results / "metrics" / "comparisons.csv")
    assert set(comparisons["comparison"]) == {"recalibration"} and len(comparisons) == 4 * 4  # 4 methods x 4 maps
    confidence = pd.read_parquet(results / "confidence" / "geo" / "tiny" / "main.parquet")
    assert list(confidence.columns[:4]) == ["item_id", "method", "confidence", "correct"]
    provenance = read_provenance(results / "inference" / "geo" / "tiny" / "main.parquet")
    assert provenance["checkpoint"]["source"].startswith("local:") and provenance["packages"]["torch"]
    for name in ("reliability_prose", "reliability_facts", "reliability_geo", "summary", "recalibration",
                 "risk_coverage_geo", "metric_agreement"):
        for ext in ("png", "pdf"):
            assert (results / "figures" / f"{name}.{ext}").stat().st_size > 1000
    assert not (results / "checkpoints" / "tiny" / "main").exists()  # temporary: gone after inference
    assert (results / "logs" / "infer" / "tiny" / "main.log").read_text().count("questions 6/6")
    assert (results / "benchmarks" / "infer" / "tiny" / "main.tsv").is_file()


def test_report_holds_every_figure(finished_run):
    workdir, config = finished_run
    snakemake(workdir, write_config(workdir, config, "report.yaml"), "--report", str(workdir / "report.html"))
    html = (workdir / "report.html").read_text()
    for name in ("reliability_prose.png", "reliability_facts.png", "reliability_geo.png", "summary.png"):
        assert name in html
    assert "4. Per task" in html  # the reliability diagrams' category


def test_complete_run_has_nothing_to_do(finished_run):
    workdir, config = finished_run
    assert planned_jobs(workdir, write_config(workdir, config, "same.yaml")) == {}


def test_reordered_config_keys_rerun_nothing(finished_run):
    import yaml

    workdir, config = finished_run
    path = workdir / "sorted.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=True))  # same values, keys in another order
    assert planned_jobs(workdir, path) == {}


def test_changing_the_bin_count_reruns_scoring_not_inference(finished_run):
    workdir, config = finished_run
    changed = copy.deepcopy(config)
    changed["metrics"]["n_bins"] = 5
    assert planned_jobs(workdir, write_config(workdir, changed, "bins.yaml")) == SCORING


def test_adding_a_confidence_method_reruns_no_inference(finished_run):
    workdir, config = finished_run
    changed = copy.deepcopy(config)
    changed["tasks"]["facts"]["methods"].append("mean_token_prob")
    assert planned_jobs(workdir, write_config(workdir, changed, "method.yaml")) == {
        "extract_confidence": 1, "recalibrate": 1, **SCORING}


def test_adding_a_model_runs_only_that_models_jobs(finished_run, tiny_model_dir):
    workdir, config = finished_run
    changed = copy.deepcopy(config)
    changed["models"]["tiny2"] = {"source": f"local:{tiny_model_dir}", "revisions": ["main"]}
    # tiny2 has no family: a reliability group of its own (and the tiny group's figures redrawn), per task
    assert planned_jobs(workdir, write_config(workdir, changed, "model.yaml")) == {
        "fetch_checkpoint": 1, "infer": 1, "extract_confidence": 1, "recalibrate": 1, **SCORING,
        "plot_reliability_group": 6}


def test_adding_a_task_runs_the_model_on_that_task_only(tiny_run, tmp_path, tiny_model_dir):
    workdir = copy_run(tiny_run, tmp_path / "wf")  # a finished run of prose, facts and geo
    config = tiny_config(tiny_model_dir)
    inference = workdir / "results" / "inference"
    before = {task: (inference / task / "tiny" / "main.parquet").read_bytes() for task in config["tasks"]}

    config["tasks"]["continents"] = {"kind": "generation", "limit": 5, "max_new_tokens": 4,
                                     "dataset": {"format": "geonames", "relations": ["continent"]}}
    snakemake(workdir, write_config(workdir, config, "more.yaml"), "--cores", "2", "results/metrics/summary.csv")
    log = (workdir / "results" / "logs" / "infer" / "tiny" / "main.log").read_text()
    assert log.count("taken as it was") == 3 and "facts 5/5" in log
    for task in before:
        assert f"results/inference/{task}/tiny/main.parquet: written before" in log, task
    assert "questions" not in log and "documents" not in log and "facts 8/8" not in log  # geo, prose, facts
    assert {task: (inference / task / "tiny" / "main.parquet").read_bytes() for task in before} == before
    assert (workdir / "results" / "metrics" / "continents" / "tiny" / "main.parquet").is_file()
    assert "continents" in set(pd.read_csv(workdir / "results" / "metrics" / "summary.csv")["task"])


def _edit(path):
    """Change a file's content (Snakemake ignores a bare touch of an input it has a checksum of)."""
    original = path.read_text()
    path.write_text(original + "\n# edited\n")
    return original


def test_editing_a_module_reruns_the_rules_whose_code_imports_it_and_what_follows(finished_run):
    """A rule's code is the import closure of the modules its script imports: an edit of metrics.py (whose
    option_indices confidence and recalibration use) reruns confidence extraction and everything after it; a figure
    module reruns only the figures that import it; the natural order of runs reruns the summary, not the scores."""
    workdir, config = finished_run
    path = write_config(workdir, config, "code.yaml")
    reliability_figures = {"plot_reliability": 3, "plot_reliability_group": 3, "plot_risk_coverage": 3,
                           "plot_recalibration": 1, "plot_metric_agreement": 1, "all": 1}  # analysis draws reliability
    for module, expected in [
        ("metrics", {"extract_confidence": 1, "recalibrate": 1, **SCORING}),
        ("confidence", {"extract_confidence": 1, "recalibrate": 1, **SCORING}),
        ("recalibrate", {"recalibrate": 1, **SCORING}),
        ("metric_table", SCORING),
        ("compare", {"compare": 1, "plot_metric_agreement": 1, "all": 1}),
        ("order", {"summarize": 1, **FIGURES}),
        ("plots/style", FIGURES),
        ("plots/reliability", reliability_figures),
        ("faults", {}),  # NOT_RESULT_CODE: never changes a result
    ]:
        file = workdir / "workflow_scripts" / f"{module}.py"
        original = _edit(file)
        try:
            assert planned_jobs(workdir, path) == expected, module
        finally:
            file.write_text(original)


def test_real_fixture_data_through_the_workflow(tmp_path, tiny_model_dir):
    """MMLU (original CSVs), WikiText-2 and ROME's known facts from ../shared/fixtures, end to end."""
    from conftest import fixtures_dir

    fixtures = fixtures_dir()
    workdir = copy_workflow(tmp_path / "wf")
    config = {
        "models": {"tiny": {"source": f"local:{tiny_model_dir}"}},
        "tasks": {
            "mmlu": {"kind": "multiple_choice", "shots": 5, "limit": 4,
                     "dataset": {"format": "mmlu_csv", "path": str(fixtures / "mmlu"),
                                 "subjects": ["abstract_algebra", "world_religions"]}},
            "wikitext": {"kind": "clm", "limit": 4, "window": 64,
                         "dataset": {"format": "text", "path": str(fixtures / "wikitext-2-raw" / "wiki.test.raw"),
                                     "split": "line"}},
            "knowns": {"kind": "generation", "limit": 3, "max_new_tokens": 3,
                       "dataset": {"format": "rome_knowns",
                                   "path": str(fixtures / "rome_knowns" / "known_1000_first300.json")}},
        },
        "metrics": {"n_bootstrap": 20},
        "inference": {"threads": 1},
    }
    snakemake(workdir, write_config(workdir, config), "--cores", "2")
    summary = pd.read_csv(workdir / "results" / "metrics" / "summary.csv")
    # the mmlu fixture has val rows: recalibration is fitted on them and scores the test questions only
    mmlu = summary.query("task == 'mmlu' and aggregation == 'micro'").set_index("recalibration")["n"]
    assert mmlu.to_dict() == {"none": 8, "temperature": 8, "platt": 8, "isotonic": 8, "histogram": 8}  # 4 x 2 subjects
    recalibrated = workdir / "results" / "recalibrated" / "mmlu" / "tiny" / "main.parquet"
    assert read_provenance(recalibrated)["fit"] == "val split"
    summary = summary.query("recalibration == 'none' and aggregation == 'micro'").set_index(["task", "method"])
    assert summary.loc[("knowns", "first_token_prob"), "n"] >= 3
    data = pd.read_parquet(workdir / "results" / "data" / "mmlu.parquet")
    assert data["prompt"][0].startswith(
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n")
    assert data["prompt"][0].count("\nAnswer:") == 6
    provenance = read_provenance(workdir / "results" / "data" / "mmlu.parquet")
    assert any(path.endswith("abstract_algebra_test.csv") for path in provenance["files"])


def _failing_run(tmp_path, tiny_model_dir, model_source, task):
    workdir = copy_workflow(tmp_path / "wf")
    config = {"models": {"m": {"source": model_source}}, "tasks": {"t": task}}
    proc = snakemake(workdir, write_config(workdir, config), "--cores", "1", check=False)
    assert proc.returncode != 0
    return workdir, proc.stdout


def test_missing_dataset_file_is_named_and_nothing_is_written(tmp_path, tiny_model_dir):
    missing = tmp_path / "no-such-folder"
    workdir, out = _failing_run(tmp_path, tiny_model_dir, f"local:{tiny_model_dir}",
                                {"kind": "multiple_choice", "dataset": {"format": "mmlu_csv", "path": str(missing)}})
    assert str(missing) in out
    assert not (workdir / "results" / "data" / "t.parquet").exists()
    assert not list((workdir / "results" / "data").glob("*"))  # no temporary file left either


def test_malformed_csv_row_is_named(tmp_path, tiny_model_dir):
    root = tmp_path / "mmlu"
    (root / "dev").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "dev" / "demo_dev.csv").write_text("q,a,b,c,d,A\n")
    (root / "test" / "demo_test.csv").write_text("q1,a,b,c,d,B\nq2,a,b,c,E\n")
    workdir, out = _failing_run(tmp_path, tiny_model_dir, f"local:{tiny_model_dir}",
                                {"kind": "multiple_choice", "shots": 1,
                                 "dataset": {"format": "mmlu_csv", "path": str(root)}})
    assert "demo_test.csv" in out and "row 2" in out
    assert not (workdir / "results" / "data" / "t.parquet").exists()


def test_unreachable_model_source_is_named(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    workdir, out = _failing_run(tmp_path, tiny_model_dir, "hf:EleutherAI/pythia-70m",
                                {"kind": "clm", "dataset": {"format": "pydoc_topics"}, "limit": 1})
    assert "hf:EleutherAI/pythia-70m at revision 'main'" in out and "unreachable" in out
    assert not (workdir / "results" / "checkpoints" / "m" / "main").exists()
