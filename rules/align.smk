# Alignment of one base model (config `align`): instruction data, supervised tuning (full / LoRA),
# a reward model, RLHF (RLOO) and DPO. Every output folder holds revisions epoch<N> that a `local:`
# model source reads (the models of workflow_scripts/registry.py), the diversity of the instruction
# sets (their figures: figures.smk). Included only when the config has an `align` section. Each rule's `code`
# is the module it runs (align_data: the data; align: the training; diversity), so an edit of one
# module reruns its rules and what depends on their outputs, nothing else.


wildcard_constraints:
    instructions=one_of(STUDY.align["instructions"]),
    tuned=one_of(STUDY.tuned),


rule fetch_align_base:
    # A copy of the base that stays (the checkpoints of rule fetch_checkpoint are temporary): tuning
    # jobs added or changed later do not refetch it and so do not retrain the others.
    input:
        code=code("sources"),
        trained=STUDY.training_output(STUDY.align_base()[0]),
    output:
        directory("results/align/base"),
    log:
        "results/logs/fetch_align_base.log",
    benchmark:
        "results/benchmarks/fetch_align_base.tsv"
    priority: 10  # long jobs on the critical path first; short inference jobs fill the gaps
    resources:
        mem_mb=STUDY.align["resources"]["mem_mb"],
    params:
        source=STUDY.models[STUDY.align_base()[0]].source,
        revision=STUDY.align_base()[1],
    script:
        "scripts/fetch_align_base.py"


rule build_instructions:
    input:
        code=code("align_data"),
        held_out=eval_task_tables(),
    output:
        "results/align/data/instructions/{instructions}.parquet",
    log:
        "results/logs/build_instructions/{instructions}.log",
    benchmark:
        "results/benchmarks/build_instructions/{instructions}.tsv"
    resources:
        mem_mb=4000,
    params:
        dataset=lambda wc: canonical(STUDY.align["instructions"][wc.instructions]),
        limit=STUDY.align["limit"],
        seed=config["seed"],
    script:
        "scripts/build_instructions.py"


if STUDY.preference:

    rule build_preferences:
        input:
            code=code("align_data"),
            held_out=eval_task_tables(),
        output:
            "results/align/data/preferences.parquet",
        log:
            "results/logs/build_preferences.log",
        benchmark:
            "results/benchmarks/build_preferences.tsv"
        resources:
            mem_mb=4000,
        params:
            dataset=lambda wc: canonical(STUDY.preference["data"]),
            limit=STUDY.preference["limit"],
            seed=config["seed"],
        script:
            "scripts/build_preferences.py"


rule tune:
    input:
        code=code("align", "launch"),
        base="results/align/base",
        data=lambda wc: f"results/align/data/instructions/{STUDY.tuned[wc.tuned].labels['data']}.parquet",
    output:
        directory("results/align/models/{tuned}"),
    log:
        "results/logs/tune/{tuned}.log",
    benchmark:
        "results/benchmarks/tune/{tuned}.tsv"
    priority: 10  # long jobs on the critical path first; short inference jobs fill the gaps
    threads: STUDY.align["threads"]
    resources:
        mem_mb=lambda wc: STUDY.training_resources(STUDY.tuning_of(wc.tuned))["mem_mb"],
        gpu=lambda wc: STUDY.training_resources(STUDY.tuning_of(wc.tuned))["gpu"],
        runtime=lambda wc: STUDY.training_resources(STUDY.tuning_of(wc.tuned))["runtime"],
    params:
        tuning=lambda wc: STUDY.tuning_of(wc.tuned),
        lr=lambda wc: STUDY.tuning_settings(STUDY.tuning_of(wc.tuned))["lr"],  # the schema's default where unset
        lora=lambda wc: STUDY.tuning_settings(STUDY.tuning_of(wc.tuned))["lora"],
        training=lambda wc: STUDY.tuning_settings(STUDY.tuning_of(wc.tuned))["training"],
        parallel=lambda wc: STUDY.training_parallel(STUDY.tuning_of(wc.tuned)),
        seed=config["seed"],
        work_dir=lambda wc: f"results/align/work/{wc.tuned}",
    script:
        "scripts/tune.py"


if "rlhf" in STUDY.preference:

    rule train_reward_model:
        input:
            code=code("align", "launch"),
            policy=STUDY.policy_dir(),
            pairs="results/align/data/preferences.parquet",
        output:
            directory("results/align/reward_model"),
        log:
            "results/logs/train_reward_model.log",
        benchmark:
            "results/benchmarks/train_reward_model.tsv"
        priority: 10  # long jobs on the critical path first; short inference jobs fill the gaps
        threads: STUDY.align["threads"]
        resources:
            **STUDY.training_resources("reward"),
        params:
            settings=STUDY.training_settings("reward"),
            parallel=STUDY.training_parallel("reward"),
            policy_revision=STUDY.policy()[1],
            max_length=STUDY.align["max_length"],
            seed=config["seed"],
        script:
            "scripts/train_reward_model.py"

    rule rlhf:
        input:
            code=code("align", "launch"),
            policy=STUDY.policy_dir(),
            reward_model="results/align/reward_model",
            pairs="results/align/data/preferences.parquet",
        output:
            directory(f"results/align/models/{STUDY.aligned_names['rlhf']}"),
        log:
            "results/logs/rlhf.log",
        benchmark:
            "results/benchmarks/rlhf.tsv"
        priority: 10  # long jobs on the critical path first; short inference jobs fill the gaps
        threads: STUDY.align["threads"]
        resources:
            **STUDY.training_resources("rlhf"),
        params:
            settings=STUDY.training_settings("rlhf"),
            parallel=STUDY.training_parallel("rlhf"),
            policy_revision=STUDY.policy()[1],
            seed=config["seed"],
            work_dir=f"results/align/work/{STUDY.aligned_names['rlhf']}",
        script:
            "scripts/rlhf.py"


if "dpo" in STUDY.preference:

    rule dpo:
        input:
            code=code("align", "launch"),
            policy=STUDY.policy_dir(),
            pairs="results/align/data/preferences.parquet",
        output:
            directory(f"results/align/models/{STUDY.aligned_names['dpo']}"),
        log:
            "results/logs/dpo.log",
        benchmark:
            "results/benchmarks/dpo.tsv"
        priority: 10  # long jobs on the critical path first; short inference jobs fill the gaps
        threads: STUDY.align["threads"]
        resources:
            **STUDY.training_resources("dpo"),
        params:
            settings=STUDY.training_settings("dpo"),
            parallel=STUDY.training_parallel("dpo"),
            policy_revision=STUDY.policy()[1],
            max_length=STUDY.align["max_length"],
            seed=config["seed"],
            work_dir=f"results/align/work/{STUDY.aligned_names['dpo']}",
        script:
            "scripts/dpo.py"


rule diversity:
    input:
        code=code("diversity"),
        data=expand("results/align/data/instructions/{instructions}.parquet", instructions=STUDY.align["instructions"]),
    output:
        map="results/align/diversity_map.parquet",
        csv="results/metrics/diversity.csv",
    log:
        "results/logs/diversity.log",
    benchmark:
        "results/benchmarks/diversity.tsv"
    threads: STUDY.align["threads"]
    resources:
        mem_mb=4000,
    params:
        names=list(STUDY.align["instructions"]),
        settings=canonical(STUDY.align["diversity"]),
        seed=config["seed"],
    script:
        "scripts/diversity.py"
