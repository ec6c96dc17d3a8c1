# Path and config helpers shared by the rules.
import glob
import re
import sys
from pathlib import Path

TASKS = dict(config["tasks"])  # and, below, the tasks of imported lm-evaluation-harness runs
REGULAR_TASKS = sorted(config["tasks"])  # the tasks this workflow builds and runs models on
CODE = Path(workflow.basedir) / "workflow_scripts"
LABELS = ("family", "data", "stage", "size", "tuning")
ALIGN = config.get("align", {})
PREFERENCE = ALIGN.get("preference", {})


def check_datasets():
    """The dataset options of every task, instruction set and preference set, each checked against its
    format's keys: a misspelled one stops the run here, before any job, with one line naming it."""
    from workflow_scripts.align_data import check_instruction_set, check_preference_data
    from workflow_scripts.tasks import DatasetError, check_dataset_keys

    try:
        for name, task in config["tasks"].items():
            check_dataset_keys(name, task["kind"], task["dataset"])
        for name, dataset in ALIGN.get("instructions", {}).items():
            check_instruction_set(name, dataset)
        if PREFERENCE:
            check_preference_data(PREFERENCE["data"])
    except DatasetError as error:
        raise ValueError(f"config: {error}") from None


check_datasets()


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


def inference_settings(task, model):
    """Everything that shapes the raw log-probabilities of a model on a task (global, then per
    task, then per model)."""
    settings = {k: v for k, v in config["inference"].items() if k != "threads"}  # threads: the rule's
    settings.update({k: TASKS[task][k] for k in ("window", "window_mode", "max_new_tokens", "stop", "chat")
                     if k in TASKS[task]})
    settings.update(MODELS[model].get("inference", {}))
    return canonical(settings)


def methods_of(task):
    """The confidence methods of a task: its `methods`, else those that apply to its kind and scoring."""
    from workflow_scripts.confidence import default_methods
    from workflow_scripts.tasks import task_scoring

    return TASKS[task].get("methods") or default_methods(TASKS[task]["kind"], task_scoring(TASKS[task]))


def task_methods(wildcards):
    return methods_of(wildcards.task)


def dataset_files(wildcards):
    """Files a task reads (its own, and the installed package data it is built from), so that a
    changed dataset file reruns its dependants."""
    from workflow_scripts.tasks import package_data_files

    dataset = TASKS[wildcards.task]["dataset"]
    if "hub" in dataset:
        return []
    files = package_data_files(dataset)
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


def align_base_revision(models):
    """The revision of the base model that alignment starts from (default: its last one)."""
    base = models[ALIGN["base"]]
    revision = ALIGN.get("revision", base["revisions"][-1])
    if revision not in base["revisions"]:
        raise ValueError(f"config: align.revision {revision!r} is not a revision of {ALIGN['base']!r} "
                         f"({', '.join(base['revisions'])}); add it there so the base is evaluated too")
    return revision


def aligned_models(models):
    """The models the align stage trains (config `align`): (supervised runs: name -> {data, tuning},
    preference-tuned names: stage -> name, model entries: name -> config of the model)."""
    if not ALIGN:
        return {}, {}, {}
    base = ALIGN["base"]
    if base not in models:
        raise ValueError(f"config: align.base {base!r} is not a model (models: {', '.join(models)})")
    align_base_revision(models)
    labels = {k: models[base][k] for k in ("family", "size", "inference", "resources") if k in models[base]}
    tuned = {f"{base}-sft-{data}-{tuning}": {"data": data, "tuning": tuning}
             for data in ALIGN["instructions"] for tuning in ALIGN["tuning"]}
    entries = {name: {"source": f"local:results/align/models/{name}", **labels, "stage": "sft", **run,
                      "revisions": [f"epoch{e}" for e in range(1, ALIGN["epochs"] + 1)]}
               for name, run in tuned.items()}
    names = {}
    if PREFERENCE:
        policy = f"{base}-sft-{PREFERENCE['policy']}"
        if policy not in tuned:
            known = ", ".join(f"{run['data']}-{run['tuning']}" for run in tuned.values())
            raise ValueError(f"config: align.preference.policy {PREFERENCE['policy']!r} is not a tuned model ({known})")
        for stage in ("rlhf", "dpo"):
            if stage in PREFERENCE:
                names[stage] = name = f"{base}-{stage}"
                entries[name] = {"source": f"local:results/align/models/{name}", **labels, "stage": stage,
                                 **tuned[policy], "revisions": [f"epoch{e}" for e in range(1, PREFERENCE[stage]["epochs"] + 1)]}
    clash = sorted(set(entries) & set(models))
    if clash:
        raise ValueError(f"config: models {clash} are also names of aligned models; rename them")
    return tuned, names, entries


def first_import(task):
    """The samples file of an imported task that its task table is built from (the first model's)."""
    return next(IMPORTS[model][task] for model in IMPORTS if task in IMPORTS[model])


def imported_runs():
    """The lm-evaluation-harness runs of config `imports`: model -> {task: samples file} of their
    multiple-choice tasks; every other task is skipped with a line saying why."""
    if not config["imports"]:
        return {}
    from workflow_scripts.imports import find_samples, output_type

    runs = {}
    for model, run in config["imports"].items():
        runs[model] = {}
        for task, samples in find_samples(run["lm_eval"], run.get("tasks")).items():
            if (kind := output_type(samples)) == "multiple_choice":
                runs[model][task] = str(samples)
            else:
                print(f"imports: {model}: task {task} skipped: a {kind} task's samples hold no per-item "
                      "confidence", file=sys.stderr)
    return runs


PRETRAINED = pretrained_models()
TUNED, ALIGNED_NAMES, ALIGNED = aligned_models({**config["models"], **PRETRAINED})
MODELS = {**config["models"], **PRETRAINED, **ALIGNED}
IMPORTS = imported_runs()
for clash, what in ((set(IMPORTS) & set(MODELS), "models"), ({t for r in IMPORTS.values() for t in r} & set(TASKS), "tasks")):
    if clash:
        raise ValueError(f"config: imports: {sorted(clash)} are also names of {what}; rename them")
RUNS = [(task, model, revision) for task in REGULAR_TASKS for model in MODELS for revision in MODELS[model]["revisions"]]
RUNS += [(task, model, "lm_eval") for model in IMPORTS for task in sorted(IMPORTS[model])]
MODELS.update({model: {"source": f"lm_eval:{run['lm_eval']}", "revisions": ["lm_eval"], **run.get("labels", {})}
               for model, run in config["imports"].items()})
if IMPORTS:
    from workflow_scripts.imports import METHODS as IMPORTED_METHODS

    TASKS.update({task: {"kind": "multiple_choice", "scoring": "continuation", "methods": IMPORTED_METHODS}
                  for task in sorted({t for r in IMPORTS.values() for t in r})})
if not RUNS:
    raise ValueError("config: nothing to evaluate: add models and tasks (or a `pretrain` suite, or `imports`)")


def one_of(names):
    """A wildcard constraint matching exactly these names (nothing where there are none)."""
    return "|".join(map(re.escape, names)) or "(?!)"


wildcard_constraints:
    task=one_of(TASKS),
    model=one_of(MODELS),
    revision="[^/]+",


def trained_model_dir(wildcards):
    """The training output a model of the suite or an aligned model is read from (nothing for other models)."""
    return training_output(wildcards.model)


def training_output(model):
    """The folder a model trained here is read from: the suite's or the align stage's (or none)."""
    if model in PRETRAINED:
        return [f"results/pretrain/models/{model}"]
    if model in ALIGNED:
        return [f"results/align/models/{model}"]
    return []


def eval_task_tables():
    """Task tables whose facts the offline instruction and preference sets must not teach."""
    return [f"results/data/{t}.parquet" for t in TASKS if TASKS[t]["kind"] != "clm"]


def policy_dir():
    """The tuned model that preference optimisation starts from (its last epoch is used)."""
    return f"results/align/models/{ALIGN['base']}-sft-{PREFERENCE['policy']}"


def align_resources():
    """Cluster resources of the training jobs (config align.resources)."""
    res = ALIGN.get("resources", {})
    return {"mem_mb": res.get("mem_mb", 8000), "gpu": res.get("gpu", 0), "runtime": res.get("runtime", 120)}


def primary_methods():
    """The first configured confidence method of every task: the one the study's figures use."""
    return {t: methods_of(t)[0] for t in TASKS}


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
    if ALIGN:
        targets += ["results/figures/alignment.png", "results/figures/diversity.png"]
    if ALIGNED_NAMES:
        targets += ["results/metrics/rlhf.csv"]
    return targets


def revision_order(revisions):
    """Revisions by their step or epoch number where every one has one (step4 before step16), else as listed."""
    from workflow_scripts.metrics import parse_epoch
    from workflow_scripts.sources import parse_step

    numbers = [parse_step(r) if parse_step(r) is not None else parse_epoch(r) for r in revisions]
    return list(revisions) if None in numbers else [r for _, r in sorted(zip(numbers, revisions))]


def comparison_pairs():
    """The model pairs of results/metrics/comparisons.csv, each {comparison, a, b} (differences are b - a):
    every aligned model's revisions against the base revision it was tuned from, consecutive revisions of
    every model, and consecutive sizes of every suite of `figures.suites` (base models of a family and
    data variant, in config order, each at its last revision)."""
    pairs = []

    def pair(kind, a, b):
        pairs.append({"comparison": kind, "a": {"model": a[0], "revision": a[1]}, "b": {"model": b[0], "revision": b[1]}})

    if ALIGN:
        base = (ALIGN["base"], align_base_revision(MODELS))
        for name in ALIGNED:
            for revision in ALIGNED[name]["revisions"]:
                pair("aligned_vs_base", base, (name, revision))
    for name, entry in MODELS.items():
        revisions = revision_order(entry["revisions"])
        for a, b in zip(revisions, revisions[1:]):
            pair("consecutive_checkpoints", (name, a), (name, b))
    for family in config["figures"].get("suites", []):
        variants = {}
        for name, entry in MODELS.items():
            if entry.get("family") == family and entry.get("stage", "base") == "base":
                variants.setdefault(entry.get("data"), []).append((name, revision_order(entry["revisions"])[-1]))
        for members in variants.values():
            for a, b in zip(members, members[1:]):
                pair("consecutive_sizes", a, b)
    return pairs


def alignment_models():
    """The models of the alignment figure, in order: the base at its tuned revision, then every
    supervised run, then DPO and RLHF (last), as {model: [revisions]}."""
    base = ALIGN["base"]
    order = {base: [align_base_revision(MODELS)]}
    order.update({name: ALIGNED[name]["revisions"] for name in TUNED})
    order.update({ALIGNED_NAMES[s]: ALIGNED[ALIGNED_NAMES[s]]["revisions"] for s in ("dpo", "rlhf") if s in ALIGNED_NAMES})
    return order
