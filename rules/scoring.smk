# Stage 3: confidence per method, calibration metrics per run, and the tables of the whole study.


rule extract_confidence:
    input:
        code=code("confidence"),
        raw="results/inference/{task}/{model}/{revision}.parquet",
        data="results/data/{task}.parquet",
    output:
        "results/confidence/{task}/{model}/{revision}.parquet",
    params:
        kind=lambda wc: TASKS[wc.task]["kind"],
        methods=task_methods,
        match=lambda wc: TASKS[wc.task].get("match", "prefix"),  # the alias rule of generation tasks
    log:
        "results/logs/extract_confidence/{task}/{model}/{revision}.log",
    benchmark:
        "results/benchmarks/extract_confidence/{task}/{model}/{revision}.tsv"
    resources:
        mem_mb=4000,
    script:
        "scripts/extract_confidence.py"


rule score:
    input:
        code=code("metrics"),
        confidence="results/confidence/{task}/{model}/{revision}.parquet",
    output:
        summary="results/metrics/{task}/{model}/{revision}.parquet",
        bins="results/metrics/{task}/{model}/{revision}.bins.parquet",
    params:
        metrics=canonical(config["metrics"]),
        labels=model_labels,
    log:
        "results/logs/score/{task}/{model}/{revision}.log",
    benchmark:
        "results/benchmarks/score/{task}/{model}/{revision}.tsv"
    resources:
        mem_mb=4000,
    script:
        "scripts/score.py"


rule summarize:
    input:
        code=code("metrics"),
        summaries=run_outputs("metrics"),
        bins=run_outputs("metrics", ".bins.parquet"),
    output:
        summary="results/metrics/summary.parquet",
        csv="results/metrics/summary.csv",
        reliability="results/metrics/reliability.parquet",
    log:
        "results/logs/summarize.log",
    benchmark:
        "results/benchmarks/summarize.tsv"
    resources:
        mem_mb=2000,
    script:
        "scripts/summarize.py"
