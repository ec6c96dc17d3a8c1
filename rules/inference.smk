# Stage 2: the only expensive step. One job per checkpoint runs every task (the model is loaded
# once); raw log-probabilities are stored once per task, model, revision.


rule infer:
    input:
        code=code("inference"),
        data=task_tables(STUDY.regular_tasks),
        checkpoint="results/checkpoints/{model}/{revision}",
    output:
        checkpoint_files("inference", STUDY.regular_tasks),
    log:
        "results/logs/infer/{model}/{revision}.log",
    benchmark:
        "results/benchmarks/infer/{model}/{revision}.tsv"
    threads: config["inference"]["threads"]
    resources:
        mem_mb=model_resource("mem_mb", 8000),
        gpu=model_resource("gpu", 0),
        runtime=model_resource("runtime", 120),
    params:
        # by name, as are the inputs and outputs (the order of the config's tasks changes nothing)
        tasks=lambda wc: canonical(
            {
                task: {"kind": STUDY.kind(task), "settings": STUDY.inference_settings(task, wc.model)}
                for task in STUDY.regular_tasks
            }
        ),
        source=lambda wc: STUDY.models[wc.model].source,
    script:
        "scripts/infer.py"


# Stage 2b: the second pass (P(True), verbalized confidence) reads the first pass's answers and asks the
# model about them; one job per checkpoint for every task that lists such a method.
if STUDY.self_eval_tasks:

    rule self_evaluate:
        input:
            code=code("self_eval"),
            data=task_tables(STUDY.self_eval_tasks),
            first_pass=checkpoint_files("inference", STUDY.self_eval_tasks),
            checkpoint="results/checkpoints/{model}/{revision}",
        output:
            [
                f"results/self_eval/{task}/{{model}}/{{revision}}.{method}.parquet"
                for task in STUDY.self_eval_tasks
                for method in STUDY.self_eval_methods(task)
            ],
        log:
            "results/logs/self_evaluate/{model}/{revision}.log",
        benchmark:
            "results/benchmarks/self_evaluate/{model}/{revision}.tsv"
        threads: config["inference"]["threads"]
        resources:
            mem_mb=model_resource("mem_mb", 8000),
            gpu=model_resource("gpu", 0),
            runtime=model_resource("runtime", 120),
        params:
            tasks=lambda wc: canonical(
                {
                    task: {
                        "kind": STUDY.kind(task),
                        "methods": STUDY.task_methods(task),
                        "second_pass": STUDY.self_eval_methods(task),
                        "match": STUDY.task_config[task].get("match", "prefix"),
                        "settings": STUDY.self_eval_settings(task, wc.model),
                    }
                    for task in STUDY.self_eval_tasks
                }
            ),
            prompts=STUDY.self_eval_prompts(),
            source=lambda wc: STUDY.models[wc.model].source,
        script:
            "scripts/self_evaluate.py"
