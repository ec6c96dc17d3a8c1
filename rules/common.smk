# Path and config helpers shared by the rules.
import glob
import re
from pathlib import Path

MODELS = config["models"]
TASKS = config["tasks"]
CODE = Path(workflow.basedir) / "workflow_scripts"
RUNS = [(task, model, revision) for task in TASKS for model in MODELS for revision in MODELS[model]["revisions"]]
LABELS = ("family", "params", "data", "stage", "tuning", "epoch")


wildcard_constraints:
    task="|".join(map(re.escape, TASKS)),
    model="|".join(map(re.escape, MODELS)),
    revision="[^/]+",


def code(module):
    """The stage module a rule runs: editing it reruns that rule and nothing upstream."""
    return str(CODE / f"{module}.py")


def checkpoint(model, revision):
    path = directory(f"results/checkpoints/{model}/{revision}")
    return path if config["keep_checkpoints"] else temp(path)


def run_outputs(stage, suffix=".parquet"):
    """The per-run files of one stage, for every task, model and revision."""
    return [f"results/{stage}/{t}/{m}/{r}{suffix}" for t, m, r in RUNS]


def model_resource(name, default):
    """A resource of the model's jobs (memory, GPUs, run time), from models.<model>.resources."""
    return lambda wildcards: MODELS[wildcards.model].get("resources", {}).get(name, default)


def model_labels(wildcards):
    return {k: MODELS[wildcards.model][k] for k in LABELS if k in MODELS[wildcards.model]}


def inference_settings(wildcards):
    """Everything that shapes the raw log-probabilities of one task (global, then per task)."""
    task = TASKS[wildcards.task]
    settings = {k: v for k, v in config["inference"].items() if k != "threads"}  # threads: the rule's
    settings.update({k: task[k] for k in ("window", "max_new_tokens", "stop") if k in task})
    settings.update(MODELS[wildcards.model].get("inference", {}))
    return settings


def task_methods(wildcards):
    from workflow_scripts.confidence import METHODS

    task = TASKS[wildcards.task]
    return task.get("methods") or list(METHODS[task["kind"]])


def dataset_files(wildcards):
    """Local files a task reads, so that editing a dataset file reruns its dependants."""
    dataset = TASKS[wildcards.task]["dataset"]
    if "hub" in dataset:
        return []
    files = []
    paths = [dataset[k] for k in ("path", "dev", "test", "relations") if isinstance(dataset.get(k), str)]
    for pattern in paths:
        for match in sorted(glob.glob(pattern)):
            root = Path(match)
            files += sorted(str(f) for f in root.rglob("*") if f.is_file()) if root.is_dir() else [match]
    return files
