"""The pretrain rule family under Snakemake: a tiny suite trained, evaluated and drawn against scale and step."""
from __future__ import annotations

import pandas as pd
from workflow_run import copy_workflow, planned_jobs, snakemake, write_config

SUITE = {
    "family": "toy",
    "sizes": {"xs": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2},
              "s": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}},
    "data": ["standard", "deduped"], "dynamics": "s", "steps": 4, "checkpoints": [1, 2, 4],
    "batch_size": 2, "seq_len": 64, "vocab_size": 300, "corpus": {"max_repeats": 8},
}
TASKS = {
    "prose": {"kind": "clm", "dataset": {"format": "pydoc_topics"}, "limit": 2, "window": 32},
    "facts": {"kind": "generation", "dataset": {"format": "geonames", "relations": ["capital"]}, "limit": 3,
              "max_new_tokens": 3},
    "geo": {"kind": "multiple_choice", "dataset": {"format": "geonames", "relations": ["capital"]}, "shots": 1,
            "limit": 3},
}


def test_suite_is_trained_evaluated_and_drawn(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    config = {"models": {}, "tasks": TASKS, "pretrain": SUITE, "metrics": {"n_bootstrap": 20},
              "inference": {"threads": 1}, "figures": {"suites": ["toy"], "dynamics": ["toy-s-standard"]}}
    path = write_config(workdir, config)
    snakemake(workdir, path, "--cores", "2")
    results = workdir / "results"
    summary = pd.read_csv(results / "metrics" / "summary.csv")
    assert set(summary["model"]) == {"toy-xs-standard", "toy-xs-deduped", "toy-s-standard", "toy-s-deduped"}
    for column in ("params", "step", "family", "data", "stage"):
        assert summary[column].notna().all(), column
    dynamics = summary.query("model == 'toy-s-standard' and task == 'geo' and recalibration == 'none'")
    assert sorted(dynamics["step"]) == [1, 2, 4]
    assert (summary.query("model != 'toy-s-standard'")["step"] == 4).all()
    params = summary.groupby("model")["params"].first()
    assert params["toy-s-standard"] > params["toy-xs-standard"] == params["toy-xs-deduped"]
    for name in ("scale", "dynamics", "reliability_scale_geo", "pretrain_loss"):
        assert (results / "figures" / f"{name}.png").stat().st_size > 1000, name
    loss = pd.read_csv(results / "pretrain" / "loss.csv")
    assert len(loss) == 4 * 4 and set(loss["step"]) == {1, 2, 4, 3}
    assert planned_jobs(workdir, path) == {}
    # longer training of the suite retrains it and reruns everything downstream of it only
    longer = dict(config, pretrain=dict(SUITE, steps=6, checkpoints=[1, 2, 4, 6]))
    jobs = planned_jobs(workdir, write_config(workdir, longer, "longer.yaml"))
    assert jobs["pretrain"] == 4 and "prepare_task" not in jobs and "build_corpus" not in jobs
