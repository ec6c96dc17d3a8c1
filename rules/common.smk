# Paths, wildcard constraints and the input functions the rules share. The study itself (runs, tasks,
# methods, settings, comparison pairs, figure targets) is workflow_scripts/study.py, built once here.
import functools
import glob
import re
import sys
from pathlib import Path

from workflow_scripts.study import ConfigError, Study, canonical
from workflow_scripts.tables import module_files

try:  # what the schema cannot check, and the local data and sources the jobs would miss: one line, before any job
    STUDY = Study(config)
    STUDY.check_inputs()
    lent = workflow.global_resources.get("gpu")  # a machine that lends GPUs (profiles/workstation, --resources gpu=N)
    if getattr(lent, "value", lent) is not None:  # Snakemake 9: a Resource; before: the number
        STUDY.check_gpus(int(getattr(lent, "value", lent)))
except ConfigError as error:
    sys.exit(str(error))
CODE = Path(workflow.basedir) / "workflow_scripts"  # the workflow's own code, not another copy on sys.path


@functools.cache
def closure(module):
    """The import closure of one module of the workflow's code (tables.module_files), read once per parse."""
    return module_files(f"workflow_scripts.{module}", CODE)


def code(*modules):
    """The files a rule's code is made of: the import closure of the modules its script imports (dotted, below
    workflow_scripts), so that editing any of them reruns the rule (tables.NOT_RESULT_CODE lists the exceptions)."""
    files = {name: path for module in modules for name, path in closure(module).items()}
    return [str(files[name]) for name in sorted(files)]


def one_of(names):
    """A wildcard constraint matching exactly these names (nothing where there are none)."""
    return "|".join(map(re.escape, names)) or "(?!)"


wildcard_constraints:
    task=one_of(STUDY.tasks),
    model=one_of(STUDY.models),
    revision="[^/]+",


def checkpoint(model, revision):
    path = directory(f"results/checkpoints/{model}/{revision}")
    return path if config["keep_checkpoints"] else temp(path)


def checkpoint_files(stage, tasks, suffix=".parquet"):
    """The files of one stage for each of ``tasks`` at the checkpoint {model}/{revision} (wildcards kept)."""
    return [f"results/{stage}/{t}/{{model}}/{{revision}}{suffix}" for t in tasks]


def run_outputs(stage, suffix=".parquet"):
    """The per-run files of one stage, for every task, model and revision."""
    return [f"results/{stage}/{t}/{m}/{r}{suffix}" for t, m, r in STUDY.runs]


def task_tables(tasks):
    return [f"results/data/{task}.parquet" for task in tasks]


def model_resource(name, default):
    """A resource of the model's jobs (memory, GPUs, run time), from models.<model>.resources."""
    return lambda wildcards: STUDY.models[wildcards.model].resources.get(name, default)


def self_eval_tables(task, wildcards):
    """The second-pass tables that a run's confidence stage reads beside the first pass, by method."""
    return {
        m: f"results/self_eval/{task}/{wildcards.model}/{wildcards.revision}.{m}.parquet"
        for m in STUDY.self_eval_methods(task)
    }


def dataset_files(wildcards):
    """Files a task reads (its own, and the installed package data it is built from), so that a
    changed dataset file reruns its dependants."""
    from workflow_scripts.tasks import dataset_paths, package_data_files

    dataset = STUDY.task_config[wildcards.task]["dataset"]
    if "hub" in dataset:
        return []
    files = package_data_files(dataset)
    for pattern in dataset_paths(dataset):
        for match in sorted(glob.glob(pattern)):
            root = Path(match)
            files += sorted(str(f) for f in root.rglob("*") if f.is_file()) if root.is_dir() else [match]
    return files


def held_out_files(wildcards):
    """A dataset's held-out `val` files (read and checked by prepare_task, recorded in its provenance)."""
    dataset = STUDY.task_config[wildcards.task]["dataset"]
    if "hub" in dataset or not isinstance(dataset.get("val"), str):
        return []
    return sorted(glob.glob(dataset["val"]))


def trained_model_dir(wildcards):
    """The training output a model of the suite or an aligned model is read from (nothing for other models)."""
    return STUDY.training_output(wildcards.model)


def eval_task_tables():
    """Task tables whose facts the offline instruction and preference sets must not teach."""
    return task_tables(t for t in STUDY.tasks if STUDY.kind(t) != "clm")


def confidence_settings(tasks, wildcards):
    """What the confidence stage does on each task: its kind, methods, alias rule and second-pass tables."""
    return {
        t: {
            "kind": STUDY.kind(t),
            "methods": STUDY.task_methods(t),
            "match": STUDY.task_config[t].get("match", "prefix"),
            "self_eval": self_eval_tables(t, wildcards),
        }
        for t in tasks
    }


def score_settings(tasks, wildcards):
    """The tasks a score job scores, and the model's labels and revision numbers (the model registry's)."""
    model = STUDY.models[wildcards.model]
    revision = model.revision(wildcards.revision)
    return {"tasks": list(tasks), "labels": model.labels, "step": revision.step, "epoch": revision.epoch}
