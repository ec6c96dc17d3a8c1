# Alignment of one base model (config `align`): instruction data, supervised tuning (full / LoRA),
# a reward model, RLHF (RLOO) and DPO. Every output folder holds revisions epoch<N> that a `local:`
# model source reads (the models are added in common.smk), and the diversity of the instruction sets.


wildcard_constraints:
    instructions="|".join(map(re.escape, ALIGN.get("instructions", {}))) or "^$",
    tuned="|".join(map(re.escape, TUNED)) or "^$",


rule fetch_align_base:
    # A copy of the base that stays (the checkpoints of rule fetch_checkpoint are temporary): tuning
    # jobs added or changed later do not refetch it and so do not retrain the others.
    input:
        code=code("sources"),
        trained=training_output(ALIGN.get("base")),
    output:
        directory("results/align/base"),
    params:
        source=MODELS.get(ALIGN.get("base"), {}).get("source"),
        revision=align_base_revision(MODELS) if ALIGN else None,
    log:
        "results/logs/fetch_align_base.log",
    benchmark:
        "results/benchmarks/fetch_align_base.tsv"
    resources:
        mem_mb=ALIGN.get("resources", {}).get("mem_mb", 8000),
    script:
        "scripts/fetch_align_base.py"


rule build_instructions:
    input:
        code=code("align"),
        held_out=eval_task_tables(),
    output:
        "results/align/data/instructions/{instructions}.parquet",
    params:
        dataset=lambda wc: canonical(ALIGN["instructions"][wc.instructions]),
        limit=ALIGN.get("limit"),
        seed=config["seed"],
    log:
        "results/logs/build_instructions/{instructions}.log",
    benchmark:
        "results/benchmarks/build_instructions/{instructions}.tsv"
    resources:
        mem_mb=4000,
    script:
        "scripts/build_instructions.py"


rule build_preferences:
    input:
        code=code("align"),
        held_out=eval_task_tables(),
    output:
        "results/align/data/preferences.parquet",
    params:
        dataset=lambda wc: canonical(PREFERENCE["data"]),
        limit=PREFERENCE.get("limit"),
        seed=config["seed"],
    log:
        "results/logs/build_preferences.log",
    benchmark:
        "results/benchmarks/build_preferences.tsv"
    resources:
        mem_mb=4000,
    script:
        "scripts/build_preferences.py"


rule tune:
    input:
        code=code("align"),
        base="results/align/base",
        data=lambda wc: f"results/align/data/instructions/{TUNED[wc.tuned]['data']}.parquet",
    output:
        directory("results/align/models/{tuned}"),
    params:
        tuning=lambda wc: TUNED[wc.tuned]["tuning"],
        settings=lambda wc: canonical(ALIGN["tuning"][TUNED[wc.tuned]["tuning"]]),
        training=canonical({k: ALIGN[k] for k in ("epochs", "batch_size", "gradient_accumulation_steps", "max_length")}),
        seed=config["seed"],
        work_dir=lambda wc: f"results/align/work/{wc.tuned}",
    threads: ALIGN.get("threads", 1)
    log:
        "results/logs/tune/{tuned}.log",
    benchmark:
        "results/benchmarks/tune/{tuned}.tsv"
    resources:
        **align_resources(),
    script:
        "scripts/tune.py"


rule train_reward_model:
    input:
        code=code("align"),
        policy=policy_dir(),
        pairs="results/align/data/preferences.parquet",
    output:
        directory("results/align/reward_model"),
    params:
        settings=canonical(PREFERENCE.get("reward", {})),
        max_length=ALIGN.get("max_length"),
        seed=config["seed"],
    threads: ALIGN.get("threads", 1)
    log:
        "results/logs/train_reward_model.log",
    benchmark:
        "results/benchmarks/train_reward_model.tsv"
    resources:
        **align_resources(),
    script:
        "scripts/train_reward_model.py"


rule rlhf:
    input:
        code=code("align"),
        policy=policy_dir(),
        reward_model="results/align/reward_model",
        pairs="results/align/data/preferences.parquet",
    output:
        directory(f"results/align/models/{ALIGNED_NAMES.get('rlhf', 'rlhf')}"),
    params:
        settings=canonical(PREFERENCE.get("rlhf", {})),
        seed=config["seed"],
        work_dir=f"results/align/work/{ALIGNED_NAMES.get('rlhf', 'rlhf')}",
    threads: ALIGN.get("threads", 1)
    log:
        "results/logs/rlhf.log",
    benchmark:
        "results/benchmarks/rlhf.tsv"
    resources:
        **align_resources(),
    script:
        "scripts/rlhf.py"


rule dpo:
    input:
        code=code("align"),
        policy=policy_dir(),
        pairs="results/align/data/preferences.parquet",
    output:
        directory(f"results/align/models/{ALIGNED_NAMES.get('dpo', 'dpo')}"),
    params:
        settings=canonical(PREFERENCE.get("dpo", {})),
        max_length=ALIGN.get("max_length"),
        seed=config["seed"],
        work_dir=f"results/align/work/{ALIGNED_NAMES.get('dpo', 'dpo')}",
    threads: ALIGN.get("threads", 1)
    log:
        "results/logs/dpo.log",
    benchmark:
        "results/benchmarks/dpo.tsv"
    resources:
        **align_resources(),
    script:
        "scripts/dpo.py"


rule diversity:
    input:
        code=code("align"),
        data=expand("results/align/data/instructions/{instructions}.parquet", instructions=ALIGN.get("instructions", {})),
    output:
        map="results/align/diversity_map.parquet",
        csv="results/metrics/diversity.csv",
    params:
        names=list(ALIGN.get("instructions", {})),
        settings=canonical(ALIGN.get("diversity", {})),
        seed=config["seed"],
    threads: ALIGN.get("threads", 1)
    log:
        "results/logs/diversity.log",
    benchmark:
        "results/benchmarks/diversity.tsv"
    resources:
        mem_mb=4000,
    script:
        "scripts/diversity.py"
