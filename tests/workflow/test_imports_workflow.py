"""An lm-evaluation-harness run imported through the workflow: the harness's accuracy and the ECE of its samples,
and an unknown import key stopping the run before any job."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import CAPITALS
from workflow_run import copy_workflow, planned_jobs, snakemake, write_config

from workflow_scripts.imports import find_samples
from workflow_scripts.metrics import expected_calibration_error


def _samples(run, task: str) -> list[dict]:
    return [json.loads(line) for line in find_samples(run)[task].read_text().splitlines()]


def test_an_imported_run_gives_the_harness_accuracy_and_the_ece_of_its_samples(harness_run, tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    config = write_config(workdir, {"imports": {"tiny": {"lm_eval": str(harness_run),
                                                         "labels": {"family": "tiny", "stage": "base"}}}})
    proc = snakemake(workdir, config, "--cores", "2")
    assert "imports: tiny: task capitals_gen skipped: a generate_until task's samples hold no per-item" in proc.stderr
    summary = pd.read_csv(workdir / "results" / "metrics" / "summary.csv")
    assert set(summary["recalibration"]) == {"none", "temperature", "platt", "isotonic", "histogram"}
    summary = summary[summary["recalibration"] == "none"].set_index("method")
    assert set(summary["task"]) == {"capitals_mc"} and (summary["model"] == "tiny").all()
    assert (summary["family"] == "tiny").all() and (summary["revision"] == "lm_eval").all()
    results = json.loads(next(find_samples(harness_run)["capitals_mc"].parent.glob("results_*.json")).read_text())
    harness = results["results"]["capitals_mc"]
    assert summary.loc["continuation_sum", "accuracy"] == harness["acc,none"]
    assert summary.loc["continuation_norm_chars", "accuracy"] == harness["acc_norm,none"]
    samples = _samples(harness_run, "capitals_mc")
    assert summary.loc["continuation_sum", "n"] == len(samples) == len(CAPITALS)
    # The same ECE from the samples by hand: softmax of the logged log-likelihoods, its top option.
    lls = [np.array([float(r[0]) for r in s["filtered_resps"]]) for s in samples]
    probs = [np.exp(ll - ll.max()) / np.exp(ll - ll.max()).sum() for ll in lls]
    correct = [int(np.argmax(ll)) == int(s["target"]) for ll, s in zip(lls, samples)]
    assert correct == [bool(s["acc"]) for s in samples]
    expected = expected_calibration_error([p.max() for p in probs], correct, 10)
    assert summary.loc["continuation_sum", "ece"] == pytest.approx(expected, abs=1e-12)
    assert (workdir / "results" / "figures" / "reliability_capitals_mc.png").is_file()
    assert planned_jobs(workdir, config) == {}


def test_an_unknown_import_key_stops_before_any_job(harness_run, tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    config = write_config(workdir, {"imports": {"tiny": {"lm_eval": str(harness_run), "task": ["capitals_mc"]}}})
    proc = snakemake(workdir, config, "--dry-run", check=False)
    assert proc.returncode != 0 and "Job stats" not in proc.stdout
    assert "imports.tiny" in proc.stderr and "unknown key `task`; did you mean `tasks`?" in proc.stderr, proc.stderr
