"""P(True) and verbalized confidence through the workflow: both scored, and a changed prompt reruns the second pass
and what follows it, nothing else; a method a task cannot have stops the run before any job."""
from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest
from workflow_run import copy_workflow, planned_jobs, snakemake, write_config


def _self_eval_config(model_dir) -> dict:
    return {
        "models": {"tiny": {"source": f"local:{model_dir}", "revisions": ["main"], "family": "tiny", "stage": "sft"}},
        "tasks": {
            "facts": {"kind": "generation", "dataset": {"format": "geonames", "relations": ["capital", "continent"]},
                      "limit": 4, "max_new_tokens": 4, "methods": ["seq_prob", "p_true", "verbalized"]},
            "geo": {"kind": "multiple_choice", "dataset": {"format": "geonames", "relations": ["capital"]},
                    "shots": 2, "limit": 6, "methods": ["option_softmax", "p_true", "verbalized"]},
        },
        "metrics": {"n_bootstrap": 20}, "inference": {"batch_size": 4, "threads": 1},
        "self_eval": {"max_new_tokens": 8},
        "recalibration": {"methods": ["temperature"]},
    }


def test_the_workflow_scores_both_methods_and_a_prompt_change_reruns_the_second_pass_onward(tmp_path,
                                                                                            chat_model_dir):
    """With the checkpoints kept, a changed prompt plans the second pass and what follows it, nothing else.
    With temporary checkpoints (the default) the model is fetched again for it, and the first pass's job
    then takes its finished tables without running the model."""
    workdir = copy_workflow(tmp_path / "workflow")
    config = write_config(workdir, {**_self_eval_config(chat_model_dir), "keep_checkpoints": True})
    snakemake(workdir, config, "--cores", "2")
    summary = pd.read_csv(workdir / "results" / "metrics" / "summary.csv")
    none = summary[summary["recalibration"] == "none"].set_index(["task", "method"])
    assert set(none.index) == {(t, m) for t in ("facts", "geo") for m in ("p_true", "verbalized")} | {
        ("facts", "seq_prob"), ("geo", "option_softmax")}
    assert none.loc[("facts", "p_true"), ["n", "unparsed"]].tolist() == [8, 0]
    assert none.loc[("geo", "verbalized"), ["n", "unparsed"]].tolist() == [0, 6]  # random weights: no reply parses
    code = workdir / "workflow_scripts" / "self_eval.py"
    code.write_text(code.read_text().replace('"The proposed answer is:"', '"The answer is:"'))
    after_the_second_pass = {"extract_confidence": 1, "recalibrate": 1, "score": 1, "summarize": 1, "compare": 1,
                             "plot_reliability": 2, "plot_reliability_group": 2, "plot_summary": 1,
                             "plot_summary_table": 1, "plot_recalibration": 1, "plot_risk_coverage": 2,
                             "plot_metric_agreement": 1, "all": 1}
    assert planned_jobs(workdir, config) == {"self_evaluate": 1, **after_the_second_pass}

    temporary = write_config(workdir, _self_eval_config(chat_model_dir), "temporary.yaml")
    shutil.rmtree(workdir / "results" / "checkpoints")
    assert planned_jobs(workdir, temporary) == {"fetch_checkpoint": 1, "infer": 1, "self_evaluate": 1,
                                                **after_the_second_pass}
    snakemake(workdir, temporary, "--cores", "2")
    log = (workdir / "results" / "logs" / "infer" / "tiny" / "main.log").read_text()
    assert log.count("taken as it was") == 2 and "inference done" not in log


@pytest.mark.parametrize("task, message", [
    ({"kind": "clm", "dataset": {"format": "pydoc_topics"}, "methods": ["max_prob", "p_true"]},
     r"tasks\.bad\.methods: unknown confidence method\(s\) \['p_true'\] for task kind 'clm'"),
    ({"kind": "generation", "dataset": {"format": "geonames"}, "methods": ["ptrue"]},
     r"tasks\.bad\.methods: unknown confidence method\(s\) \['ptrue'\]"),
    ({"kind": "multiple_choice", "dataset": {"format": "geonames"}, "methods": ["continuation_sum", "p_true"]},
     r"tasks\.bad\.methods: confidence method\(s\) \['continuation_sum'\] do not apply to scoring 'letters'"),
])
def test_a_method_the_task_cannot_have_stops_the_run_before_any_job(tmp_path, tiny_model_dir, task, message):
    workdir = copy_workflow(tmp_path / "workflow")
    config = {"models": {"tiny": {"source": f"local:{tiny_model_dir}"}}, "tasks": {"bad": task}}
    proc = snakemake(workdir, write_config(workdir, config), "--dry-run", check=False)
    assert proc.returncode != 0
    assert re.search(message, proc.stdout), proc.stdout[-2000:]
    assert not (workdir / "results").exists()
