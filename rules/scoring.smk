# Stage 3: confidence per method, held-out recalibration, calibration metrics per run, the tables of the
# whole study and the paired comparisons between runs.


# On a cluster, the stages that read a run's token-level tables are cluster jobs; summarize, which gathers the
# small per-run metric tables, runs where snakemake runs. The per-run stages of one checkpoint (extract_confidence
# -> recalibrate -> score) form one group: a cluster runs them as one job, one start-up and one wait in the
# queue. A local run (no executor: make run) runs every job as before; groups change nothing there.
localrules:
    summarize,


# Memory (MB) and minutes from the size of a job's input files (MB: Snakemake's input.size_mb, their sum, or
# max(input.size_files_mb), the largest), about twice the peak that benchmarks/scale.py measures on synthetic CLM
# runs of 0.25M to 4M tokens (docs/performance.md, "At the paper's scale"), times the attempt (a retry after an
# out-of-memory kill gets twice as much):
#   extract_confidence: mem_mb = 1000 + 30 * MB, runtime = 10 + MB / 10, MB of all its inputs (a checkpoint's
#     inference tables, their task tables and second passes). A group job gets the resources of those of its jobs
#     whose inputs exist when it is submitted, extract_confidence's alone: these cover the whole chain, whose peak
#     is recalibrate's (it writes 5 rows a token: about 230 + 21 * MB of the inference tables);
#   recalibrate: mem_mb = 1000 + 80 * MB, score: 1000 + 20 * MB, runtime = 10 + MB / 10, MB of all their inputs
#     (a rerun of one of them alone, or within a group whose earlier outputs exist);
#   compare: mem_mb = 1000 + 20 * MB of its largest input (it holds one method and recalibration of one run at a
#     time), runtime = 10 + MB / 60 of all of them (it reads every run once).


# Each job serves one checkpoint, every task of it (one start-up for several small tables; a harness run's
# imported tasks each have a job of their own): the files stay per task, model and revision.


rule extract_confidence:
    input:
        code=code("confidence"),
        raw=checkpoint_files("inference", STUDY.regular_tasks),
        data=task_tables(STUDY.regular_tasks),
        self_eval=lambda wc: [path for t in STUDY.regular_tasks for path in self_eval_tables(t, wc).values()],
    output:
        checkpoint_files("confidence", STUDY.regular_tasks),
    log:
        "results/logs/extract_confidence/{model}/{revision}.log",
    benchmark:
        "results/benchmarks/extract_confidence/{model}/{revision}.tsv"
    wildcard_constraints:
        model=one_of(STUDY.evaluated),
    group:
        "scoring"
    resources:
        mem_mb=lambda wildcards, input, attempt: round((1000 + 30 * input.size_mb) * attempt),
        runtime=lambda wildcards, input, attempt: round((10 + input.size_mb / 10) * attempt),
    params:
        tasks=lambda wc: confidence_settings(STUDY.regular_tasks, wc),
    script:
        "scripts/extract_confidence.py"


rule recalibrate:
    input:
        code=code("recalibrate"),
        confidence=checkpoint_files("confidence", STUDY.regular_tasks),
        data=task_tables(STUDY.regular_tasks),
    output:
        checkpoint_files("recalibrated", STUDY.regular_tasks),
    log:
        "results/logs/recalibrate/{model}/{revision}.log",
    benchmark:
        "results/benchmarks/recalibrate/{model}/{revision}.tsv"
    wildcard_constraints:
        model=one_of(STUDY.evaluated),
    group:
        "scoring"
    resources:
        mem_mb=lambda wildcards, input, attempt: round((1000 + 80 * input.size_mb) * attempt),
        runtime=lambda wildcards, input, attempt: round((10 + input.size_mb / 10) * attempt),
    params:
        recalibration=canonical(config["recalibration"]),
    script:
        "scripts/recalibrate.py"


rule score:
    input:
        code=code("scoring"),
        recalibrated=checkpoint_files("recalibrated", STUDY.regular_tasks),
    output:
        summary=checkpoint_files("metrics", STUDY.regular_tasks),
        bins=checkpoint_files("metrics", STUDY.regular_tasks, ".bins.parquet"),
        sweep=checkpoint_files("metrics", STUDY.regular_tasks, ".sweep.parquet"),
        subjects=checkpoint_files("metrics", STUDY.regular_tasks, ".subjects.parquet"),
        curves=checkpoint_files("metrics", STUDY.regular_tasks, ".curves.parquet"),
    log:
        "results/logs/score/{model}/{revision}.log",
    benchmark:
        "results/benchmarks/score/{model}/{revision}.tsv"
    wildcard_constraints:
        model=one_of(STUDY.evaluated),
    group:
        "scoring"
    resources:
        mem_mb=lambda wildcards, input, attempt: round((1000 + 20 * input.size_mb) * attempt),
        runtime=lambda wildcards, input, attempt: round((10 + input.size_mb / 10) * attempt),
    params:
        metrics=canonical(config["metrics"]),
        run=lambda wc: score_settings(STUDY.regular_tasks, wc),
    script:
        "scripts/score.py"


if STUDY.imports:  # an imported harness run: a job per task

    use rule extract_confidence as extract_confidence_imported with:
        input:
            code=code("confidence"),
            raw=checkpoint_files("inference", ["{task}"]),
            data=task_tables(["{task}"]),
        output:
            checkpoint_files("confidence", ["{task}"]),
        log:
            "results/logs/extract_confidence/{task}/{model}/{revision}.log",
        benchmark:
            "results/benchmarks/extract_confidence/{task}/{model}/{revision}.tsv"
        wildcard_constraints:
            model=one_of(STUDY.imports),
        params:
            tasks=lambda wc: confidence_settings([wc.task], wc),

    use rule recalibrate as recalibrate_imported with:
        input:
            code=code("recalibrate"),
            confidence=checkpoint_files("confidence", ["{task}"]),
            data=task_tables(["{task}"]),
        output:
            checkpoint_files("recalibrated", ["{task}"]),
        log:
            "results/logs/recalibrate/{task}/{model}/{revision}.log",
        benchmark:
            "results/benchmarks/recalibrate/{task}/{model}/{revision}.tsv"
        wildcard_constraints:
            model=one_of(STUDY.imports),

    use rule score as score_imported with:
        input:
            code=code("scoring"),
            recalibrated=checkpoint_files("recalibrated", ["{task}"]),
        output:
            summary=checkpoint_files("metrics", ["{task}"]),
            bins=checkpoint_files("metrics", ["{task}"], ".bins.parquet"),
            sweep=checkpoint_files("metrics", ["{task}"], ".sweep.parquet"),
            subjects=checkpoint_files("metrics", ["{task}"], ".subjects.parquet"),
            curves=checkpoint_files("metrics", ["{task}"], ".curves.parquet"),
        log:
            "results/logs/score/{task}/{model}/{revision}.log",
        benchmark:
            "results/benchmarks/score/{task}/{model}/{revision}.tsv"
        wildcard_constraints:
            model=one_of(STUDY.imports),
        params:
            metrics=canonical(config["metrics"]),
            run=lambda wc: score_settings([wc.task], wc),


rule summarize:
    input:
        code=code("summary"),
        summaries=run_outputs("metrics"),
        bins=run_outputs("metrics", ".bins.parquet"),
        sweeps=run_outputs("metrics", ".sweep.parquet"),
        subjects=run_outputs("metrics", ".subjects.parquet"),
        curves=run_outputs("metrics", ".curves.parquet"),
    output:
        summary="results/metrics/summary.parquet",
        csv="results/metrics/summary.csv",
        reliability="results/metrics/reliability.parquet",
        sweep="results/metrics/bin_sweep.parquet",
        subjects="results/metrics/subjects.parquet",
        curves="results/metrics/curves.parquet",
    log:
        "results/logs/summarize.log",
    benchmark:
        "results/benchmarks/summarize.tsv"
    resources:
        mem_mb=2000,
    script:
        "scripts/summarize.py"


rule compare:
    input:
        code=code("compare"),
        runs=run_outputs("recalibrated"),
    output:
        "results/metrics/comparisons.csv",
    log:
        "results/logs/compare.log",
    benchmark:
        "results/benchmarks/compare.tsv"
    resources:
        mem_mb=lambda wildcards, input, attempt: round((1000 + 20 * max(input.size_files_mb)) * attempt),
        runtime=lambda wildcards, input, attempt: round((10 + input.size_mb / 60) * attempt),
    params:
        runs=[{"task": t, "model": m, "revision": r} for t, m, r in STUDY.runs],
        pairs=STUDY.comparison_pairs(),
        metrics=canonical(config["metrics"]),
    script:
        "scripts/compare.py"
