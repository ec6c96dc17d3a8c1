# Path and config helpers shared by the rules.
import glob
import re
from pathlib import Path

TASKS = config["tasks"]
CODE = Path(workflow.basedir) / "workflow_scripts"
LABELS = ("family", "data", "stage", "size", "tuning", "epoch")


def canonical(value):
    """A config value with its mappings' keys sorted: Snakemake compares params as text, and the
    order of keys in a YAML file must not make a job look changed."""
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


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
    return canonical(settings)


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


def pretrained_models():
    """The suite trained here (config `pretrain`), as model entries: name -> config of the model."""
    if "pretrain" not in config:
        return {}
    pre = config["pretrain"]
    final = f"step{pre['steps']}"
    models = {}
    for size in pre["sizes"]:
        for data in pre["data"]:
            every_step = size == pre.get("dynamics") and data == pre["data"][0]
            models[f"{pre['family']}-{size}-{data}"] = {
                "source": f"local:results/pretrain/models/{pre['family']}-{size}-{data}",
                "revisions": [f"step{s}" for s in pre["checkpoints"]] if every_step else [final],
                "family": pre["family"], "data": data, "stage": "base", "size": size}
    clash = sorted(set(models) & set(config["models"]))
    if clash:
        raise ValueError(f"config: models {clash} are also names of the pretrain suite; rename them")
    return models


PRETRAINED = pretrained_models()
MODELS = {**config["models"], **PRETRAINED}
if not MODELS:
    raise ValueError("config: no models to evaluate: add one under `models` (or a `pretrain` suite)")
RUNS = [(task, model, revision) for task in TASKS for model in MODELS for revision in MODELS[model]["revisions"]]


wildcard_constraints:
    task="|".join(map(re.escape, TASKS)),
    model="|".join(map(re.escape, MODELS)),
    revision="[^/]+",


def trained_model_dir(wildcards):
    """The training output a model of the suite is read from (nothing for other models)."""
    return [f"results/pretrain/models/{wildcards.model}"] if wildcards.model in PRETRAINED else []


def primary_methods():
    """The first configured confidence method of every task: the one the study's figures use."""
    from workflow_scripts.confidence import METHODS

    return {t: (TASKS[t].get("methods") or list(METHODS[TASKS[t]["kind"]]))[0] for t in TASKS}


def study_figures():
    """The figures of the scale and training-dynamics study, where the config asks for them."""
    figures = config.get("figures", {})
    targets = []
    if figures.get("suites"):
        targets += ["results/figures/scale.png"]
        targets += [f"results/figures/reliability_scale_{t}.png" for t in TASKS]
    if figures.get("dynamics"):
        targets += ["results/figures/dynamics.png"]
    if PRETRAINED:
        targets += ["results/figures/pretrain_loss.png"]
    return targets
