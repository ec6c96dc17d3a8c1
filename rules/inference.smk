# Stage 2: the only expensive step; raw log-probabilities are stored once per task, model, revision.


rule infer:
    input:
        code=code("inference"),
        data="results/data/{task}.parquet",
        checkpoint="results/checkpoints/{model}/{revision}",
    output:
        "results/inference/{task}/{model}/{revision}.parquet",
    params:
        kind=lambda wc: TASKS[wc.task]["kind"],
        settings=inference_settings,
        source=lambda wc: MODELS[wc.model]["source"],
    threads: config["inference"]["threads"]
    log:
        "results/logs/infer/{task}/{model}/{revision}.log",
    benchmark:
        "results/benchmarks/infer/{task}/{model}/{revision}.tsv"
    resources:
        mem_mb=model_resource("mem_mb", 8000),
        gpu=model_resource("gpu", 0),
        runtime=model_resource("runtime", 120),
    script:
        "scripts/infer.py"
