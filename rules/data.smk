# Stage 1: model-independent task data, and every model source as a Hugging Face folder.
from workflow_scripts.sources import source_files


rule prepare_task:
    input:
        code=code("tasks"),
        files=dataset_files,
        held_out=held_out_files,
    output:
        "results/data/{task}.parquet",
    log:
        "results/logs/prepare_task/{task}.log",
    benchmark:
        "results/benchmarks/prepare_task/{task}.tsv"
    wildcard_constraints:
        task=one_of(STUDY.regular_tasks),  # imported tasks get their tables from the harness's samples
    resources:
        mem_mb=4000,
    params:
        kind=lambda wc: STUDY.task_config[wc.task]["kind"],
        dataset=lambda wc: canonical(STUDY.task_config[wc.task]["dataset"]),
        shots=lambda wc: STUDY.task_config[wc.task].get("shots"),
        limit=lambda wc: STUDY.task_config[wc.task]["limit"],
        seed=config["seed"],
        prompting=lambda wc: STUDY.prompting(wc.task),
    script:
        "scripts/prepare_task.py"


rule fetch_checkpoint:
    input:
        code=code("sources"),
        trained=trained_model_dir,
        # the files of a local: folder or a GGUF file, so that a changed file fetches again (trained models: trained)
        watched=lambda wc: (
            [] if STUDY.training_output(wc.model) else source_files(STUDY.models[wc.model].source, wc.revision)
        ),
    output:
        checkpoint("{model}", "{revision}"),
    log:
        "results/logs/fetch_checkpoint/{model}/{revision}.log",
    benchmark:
        "results/benchmarks/fetch_checkpoint/{model}/{revision}.tsv"
    resources:
        mem_mb=model_resource("mem_mb", 8000),
        disk_mb=model_resource("disk_mb", 10000),
        runtime=model_resource("fetch_runtime", 60),
    params:
        source=lambda wc: STUDY.models[wc.model].source,
        evict_hub_cache=config["evict_hub_cache"],
        trust_remote_code=lambda wc: STUDY.models[wc.model].trust_remote_code,
    script:
        "scripts/fetch_checkpoint.py"
