"""The align rule family under Snakemake: a tiny base model trained here, tuned (full and LoRA, two instruction
sets), preference-optimised (reward model + RLHF, DPO), evaluated as model sources and drawn; and what an edit
of a setting or of a module reruns."""
from __future__ import annotations

import pandas as pd
from workflow_run import copy_workflow, planned_jobs, snakemake, write_config

SUITE = {
    "family": "toy", "sizes": {"xs": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}},
    "data": ["standard"], "steps": 4, "checkpoints": [2, 4], "batch_size": 2, "seq_len": 256, "vocab_size": 300,
    "corpus": {"max_repeats": 8},
}
TASKS = {"facts": {"kind": "generation", "dataset": {"format": "geonames", "relations": ["capital"]}, "limit": 3,
                   "max_new_tokens": 3}}
ALIGN = {
    "base": "toy-xs-standard",
    "instructions": {"narrow": {"format": "geonames", "style": "narrow"},
                     "broad": {"format": "geonames", "style": "broad"}},
    "tuning": {"full": {"lr": 1e-3}, "lora": {"lr": 1e-2, "r": 2, "alpha": 4, "target_modules": ["query_key_value"]}},
    "epochs": 2, "batch_size": 16, "max_length": 256, "limit": 32, "threads": 1,
    "preference": {"policy": "narrow-full", "data": {"format": "geonames"}, "limit": 16,
                   "reward": {"epochs": 1, "lr": 1e-3},
                   "rlhf": {"epochs": 1, "batch_size": 8, "max_completion_length": 4, "prompts": 8, "lr": 1e-4},
                   "dpo": {"epochs": 1, "lr": 1e-4}},
    "diversity": {"sample": 16},
}


def test_alignment_is_trained_evaluated_and_drawn(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    config = {"models": {}, "tasks": TASKS, "pretrain": SUITE, "align": ALIGN, "metrics": {"n_bootstrap": 20},
              "inference": {"threads": 1}}
    path = write_config(workdir, config)
    snakemake(workdir, path, "--cores", "2")
    results = workdir / "results"
    summary = pd.read_csv(results / "metrics" / "summary.csv")
    aligned = summary[summary["model"].str.startswith("toy-xs-standard-")]
    assert set(aligned["model"]) == {
        f"toy-xs-standard-sft-{d}-{t}" for d in ("narrow", "broad") for t in ("full", "lora")} | {
        "toy-xs-standard-rlhf", "toy-xs-standard-dpo"}
    sft = aligned[aligned["stage"] == "sft"]
    assert sorted(sft["epoch"].unique()) == [1, 2] and set(sft["tuning"]) == {"full", "lora"}
    assert set(sft["data"]) == {"narrow", "broad"} and sft["family"].eq("toy").all()
    preference = aligned[aligned["stage"].isin(["rlhf", "dpo"])]
    assert set(preference["stage"]) == {"rlhf", "dpo"} and (preference["data"] == "narrow").all()
    assert summary.loc[summary["model"] == "toy-xs-standard", "stage"].eq("base").all()
    assert summary.loc[summary["model"] == "toy-xs-standard", "epoch"].isna().all()

    rlhf = pd.read_csv(results / "metrics" / "rlhf.csv")
    assert set(zip(rlhf["stage"], rlhf["epoch"])) == {("sft", 0), ("dpo", 1), ("rlhf", 1)}
    assert (rlhf.loc[rlhf["epoch"] == 0, "model"] == "toy-xs-standard-sft-narrow-full").all()
    assert (rlhf.loc[rlhf["epoch"] == 0, "revision"] == "epoch2").all()
    diversity = pd.read_csv(results / "metrics" / "diversity.csv")
    assert list(diversity["dataset"]) == ["narrow", "broad"] and (diversity["n"] == 16).all()
    for name in ("alignment", "diversity"):
        assert (results / "figures" / f"{name}.png").stat().st_size > 1000, name
    assert (results / "align" / "models" / "toy-xs-standard-sft-broad-lora" / "adapters" / "epoch2").is_dir()
    assert planned_jobs(workdir, path) == {}

    # another LoRA rank retrains the LoRA runs and what depends on them only
    changed = dict(config, align=dict(ALIGN, tuning=dict(ALIGN["tuning"], lora=dict(ALIGN["tuning"]["lora"], r=4))))
    jobs = planned_jobs(workdir, write_config(workdir, changed, "changed.yaml"))
    assert jobs["tune"] == 2 and jobs["infer"] == 2 * 2  # 2 runs x 2 epochs
    assert not {"pretrain", "build_instructions", "train_reward_model", "rlhf", "dpo", "diversity"} & set(jobs)

    # a batch size of its own for LoRA (the method's, over align's) retrains the LoRA runs only, and
    # training the reward model in two processes retrains it and RLHF, nothing else
    changed = dict(config,
                   align=dict(ALIGN, tuning=dict(ALIGN["tuning"], lora=dict(ALIGN["tuning"]["lora"], batch_size=8))))
    jobs = planned_jobs(workdir, write_config(workdir, changed, "changed.yaml"))
    assert jobs["tune"] == 2 and not {"train_reward_model", "rlhf", "dpo"} & set(jobs)
    two = {"processes": 2}
    preference = dict(ALIGN["preference"], reward=dict(ALIGN["preference"]["reward"], parallel=two))
    jobs = planned_jobs(workdir,
                        write_config(workdir, dict(config, align=dict(ALIGN, preference=preference)), "changed.yaml"))
    assert jobs["train_reward_model"] == 1 and jobs["rlhf"] == 1 and not {"tune", "dpo"} & set(jobs)

    # an edit of the diversity code reruns the diversity job and its figure, no training and no inference
    module = workdir / "workflow_scripts" / "diversity.py"
    module.write_text(module.read_text() + "\n# edited\n")
    assert planned_jobs(workdir, path) == {"diversity": 1, "plot_diversity": 1, "all": 1}
