# Existing lm-evaluation-harness runs (config `imports`): their multiple-choice samples become the
# task and inference tables of this workflow, without running a model.


# Seconds of pandas each: run where snakemake runs.
localrules:
    import_task_table,
    import_lm_eval,


rule import_task_table:
    input:
        code=code("imports"),
        samples=lambda wc: STUDY.first_import(wc.task),
    output:
        "results/data/{task}.parquet",
    log:
        "results/logs/import_task_table/{task}.log",
    benchmark:
        "results/benchmarks/import_task_table/{task}.tsv"
    wildcard_constraints:
        task=one_of(STUDY.imported_tasks),
    resources:
        mem_mb=2000,
    script:
        "scripts/import_task_table.py"


rule import_lm_eval:
    input:
        code=code("imports"),
        samples=lambda wc: STUDY.imports[wc.model][wc.task],
    output:
        "results/inference/{task}/{model}/lm_eval.parquet",
    log:
        "results/logs/import_lm_eval/{task}/{model}.log",
    benchmark:
        "results/benchmarks/import_lm_eval/{task}/{model}.tsv"
    wildcard_constraints:
        task=one_of(STUDY.imported_tasks),
        model=one_of(STUDY.imports),
    resources:
        mem_mb=2000,
    script:
        "scripts/import_lm_eval.py"
