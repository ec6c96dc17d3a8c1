# Stage 2: the only expensive step. One job per checkpoint runs every task (the model is loaded
# once); raw log-probabilities are stored once per task, model, revision.


rule infer:
    input:
        code=code("inference"),
        data=[f"results/data/{task}.parquet" for task in REGULAR_TASKS],
        checkpoint="results/checkpoints/{model}/{revision}",
    output:
        [f"results/inference/{task}/{{model}}/{{revision}}.parquet" for task in REGULAR_TASKS],
    params:
        # by name, as are the inputs and outputs (the order of the config's tasks changes nothing)
        tasks=lambda wc: canonical({task: {"kind": TASKS[task]["kind"], "settings": inference_settings(task, wc.model)}
                                    for task in REGULAR_TASKS}),
        source=lambda wc: MODELS[wc.model].source,
    threads: config["inference"]["threads"]
    log:
        "results/logs/infer/{model}/{revision}.log",
    benchmark:
        "results/benchmarks/infer/{model}/{revision}.tsv"
    resources:
        mem_mb=model_resource("mem_mb", 8000),
        gpu=model_resource("gpu", 0),
        runtime=model_resource("runtime", 120),
    script:
        "scripts/infer.py"
