"""Calibration of existing lm-evaluation-harness runs: the harness itself runs a tiny model on a
small multiple-choice task built here (and a generation task, which is skipped), with
--log_samples; the workflow imports its samples and must give the harness's acc and acc_norm, and
an ECE equal to one recomputed from the samples by hand."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import build_tiny_model
from workflow import copy_workflow, planned_jobs, snakemake, write_config

from workflow_scripts.imports import HarnessImportError, find_samples, import_samples
from workflow_scripts.metrics import expected_calibration_error

CAPITALS = [("France", "Paris"), ("Peru", "Lima"), ("Italy", "Rome"), ("Norway", "Oslo"), ("Spain", "Madrid"),
            ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Chile", "Santiago")]


def _task_yaml(name: str, data: Path, output_type: str) -> str:
    lines = [f"task: {name}", "dataset_path: json", "dataset_kwargs:", "  data_files:", f"    test: {data}",
             "test_split: test", f"output_type: {output_type}", 'doc_to_text: "Question: {{question}}\\nAnswer:"']
    if output_type == "multiple_choice":
        lines += ['doc_to_choice: "{{choices}}"', 'doc_to_target: "{{answer}}"',
                  "metric_list:", "  - metric: acc", "  - metric: acc_norm"]
    else:
        lines += ['doc_to_target: "{{choices[answer]}}"', "generation_kwargs:", '  until: ["\\n"]',
                  "  max_gen_toks: 4", "metric_list:", "  - metric: exact_match"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def harness_run(tmp_path_factory) -> Path:
    """An lm_eval --log_samples run of a tiny model: capitals_mc (2 to 8 options) and capitals_gen."""
    root = tmp_path_factory.mktemp("harness")
    model = build_tiny_model(root / "model")
    capitals = [c for _, c in CAPITALS]
    rows = [{"question": f"What is the capital of {country}?",
             "choices": sorted({capital, *capitals[:2 + n % 7]}), "answer": None}
            for n, (country, capital) in enumerate(CAPITALS)]
    for row, (_, capital) in zip(rows, CAPITALS):
        row["answer"] = row["choices"].index(capital)
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tasks").mkdir()
    for name, kind in (("capitals_mc", "multiple_choice"), ("capitals_gen", "generate_until")):
        (root / "tasks" / f"{name}.yaml").write_text(_task_yaml(name, root / "test.jsonl", kind))
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(root / "cache"),
           "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                    f"pretrained={model},dtype=float32", "--tasks", "capitals_mc,capitals_gen", "--include_path",
                    str(root / "tasks"), "--output_path", str(root / "out"), "--log_samples", "--device", "cpu",
                    "--batch_size", "4"], check=True, capture_output=True, text=True, env=env, cwd=root)
    return root / "out"


def _samples(run: Path, task: str) -> list[dict]:
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


def _copy_run(run: Path, dest: Path, task: str = "capitals_mc") -> Path:
    """The samples file of `task` and its results file, copied to `dest`; returns the samples copy."""
    samples = find_samples(run)[task]
    dest.mkdir(parents=True, exist_ok=True)
    for path in (samples, *samples.parent.glob("results_*.json")):
        shutil.copy(path, dest / path.name)
    return dest / samples.name


def test_a_folder_without_samples_is_one_clear_error(tmp_path):
    with pytest.raises(HarnessImportError, match="no samples_<task>_<date>.jsonl files .*--log_samples"):
        find_samples(tmp_path)


def test_a_task_not_in_the_run_is_named(harness_run):
    with pytest.raises(HarnessImportError, match=r"no samples files of task\(s\) \['mmlu'\]"):
        find_samples(harness_run, ["mmlu"])


@pytest.mark.parametrize("change,message", [
    (lambda s: "not json", r"line 2: not a multiple-choice sample"),
    (lambda s: json.dumps({k: v for k, v in s.items() if k != "filtered_resps"}), r"line 2: not a multiple-choice"),
    (lambda s: json.dumps({**s, "arguments": {**s["arguments"],
                                              "gen_args_1": {**s["arguments"]["gen_args_1"], "arg_0": "other"}}}),
     r"line 2: the requests of document \d+ have 2 different contexts"),
    (lambda s: json.dumps({**s, "target": "99"}), r"line 2: target '99' is neither an option index"),
])
def test_a_samples_file_of_another_shape_names_the_file_and_line(harness_run, tmp_path, change, message):
    samples = _copy_run(harness_run, tmp_path / "run")
    lines = samples.read_text().splitlines()
    lines[1] = change(json.loads(lines[1]))
    samples.write_text("\n".join(lines) + "\n")
    with pytest.raises(HarnessImportError, match=message):
        import_samples(samples, task="capitals_mc", data_out=tmp_path / "data.parquet")
    assert not (tmp_path / "data.parquet").exists()


def test_an_unknown_import_key_stops_before_any_job(harness_run, tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    config = write_config(workdir, {"imports": {"tiny": {"lm_eval": str(harness_run), "task": ["capitals_mc"]}}})
    proc = snakemake(workdir, config, "--dry-run", check=False)
    assert proc.returncode != 0 and "imports.tiny" in proc.stdout and "'task' was unexpected" in proc.stdout
