# Path and config helpers shared by the rules.
import glob
import re
import sys
from pathlib import Path

from workflow_scripts.registry import ALIGNED as ALIGNED_ORIGINS, build_registry

TASKS = dict(config["tasks"])  # and, below, the tasks of imported lm-evaluation-harness runs
REGULAR_TASKS = sorted(config["tasks"])  # the tasks this workflow builds and runs models on
CODE = Path(workflow.basedir) / "workflow_scripts"
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


def checkpoint_files(stage, tasks, suffix=".parquet"):
    """The files of one stage for each of ``tasks`` at the checkpoint {model}/{revision} (wildcards kept)."""
    return [f"results/{stage}/{t}/{{model}}/{{revision}}{suffix}" for t in tasks]


def run_outputs(stage, suffix=".parquet"):
    """The per-run files of one stage, for every task, model and revision."""
    return [f"results/{stage}/{t}/{m}/{r}{suffix}" for t, m, r in RUNS]


def model_resource(name, default):
    """A resource of the model's jobs (memory, GPUs, run time), from models.<model>.resources."""
    return lambda wildcards: MODELS[wildcards.model].resources.get(name, default)


def inference_settings(task, model):
    """Everything that shapes the raw log-probabilities of a model on a task (global, then per
    task, then per model)."""
    settings = {k: v for k, v in config["inference"].items() if k != "threads"}  # threads: the rule's
    settings.update({k: TASKS[task][k] for k in ("window", "window_mode", "max_new_tokens", "stop", "chat")
                     if k in TASKS[task]})
    settings.update(MODELS[model].inference)
    return canonical(settings)


def methods_of(task):
    """The confidence methods of a task: its `methods`, else those that apply to its kind and scoring."""
    from workflow_scripts.confidence import default_methods
    from workflow_scripts.tasks import task_scoring

    return TASKS[task].get("methods") or default_methods(TASKS[task]["kind"], task_scoring(TASKS[task]))


def check_methods():
    """Every task's confidence methods are known for its kind and scoring: an unknown one stops the run here."""
    from workflow_scripts.confidence import check_methods as check
    from workflow_scripts.tasks import task_scoring

    for name, task in config["tasks"].items():
        if "methods" in task:
            try:
                check(task["kind"], task_scoring(task), task["methods"])
            except ValueError as error:
                raise ValueError(f"config: tasks.{name}.methods: {error}") from None


check_methods()


def self_eval_methods(task):
    """The task's methods that the second inference pass serves (p_true, verbalized)."""
    from workflow_scripts.confidence import SELF_EVAL_METHODS

    return [m for m in methods_of(task) if m in SELF_EVAL_METHODS]


def self_eval_tables(task, wildcards):
    """The second-pass tables that a run's confidence stage reads beside the first pass, by method."""
    return {m: f"results/self_eval/{task}/{wildcards.model}/{wildcards.revision}.{m}.parquet"
            for m in self_eval_methods(task)}


def self_eval_prompts():
    """The second pass's prompts (workflow_scripts/self_eval.py), by method: a changed prompt reruns that pass."""
    from workflow_scripts.self_eval import PROMPTS

    return dict(PROMPTS)


def self_eval_settings(task, model):
    """What shapes a task's second pass on a model: the first pass's batch size, BOS, device and dtype, and the
    verbalized reply's length (config self_eval)."""
    settings = inference_settings(task, model)
    return canonical({**{k: settings[k] for k in ("batch_size", "add_bos", "device", "dtype")},
                      "max_new_tokens": config["self_eval"]["max_new_tokens"]})


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


# Every model, from the registry (workflow_scripts/registry.py): its names, revisions, labels and parents.
REGISTRY = build_registry(config)
MODELS = REGISTRY.models
PRETRAINED = REGISTRY.of("pretrain")
TUNED = REGISTRY.of("tune")
ALIGNED = REGISTRY.of(*ALIGNED_ORIGINS)
ALIGNED_NAMES = {m.origin: name for name, m in ALIGNED.items() if m.origin in ("rlhf", "dpo")}
IMPORTS = imported_runs()
clash = {t for r in IMPORTS.values() for t in r} & set(TASKS)
if clash:
    raise ValueError(f"config: imports: {sorted(clash)} are also names of tasks; rename them")
EVALUATED = [name for name, model in MODELS.items() if model.origin != "imports"]  # the models this workflow runs
RUNS = [(task, model, revision) for task in REGULAR_TASKS for model in EVALUATED
        for revision in MODELS[model].revision_names]
RUNS += [(task, model, "lm_eval") for model in IMPORTS for task in sorted(IMPORTS[model])]
if IMPORTS:
    from workflow_scripts.imports import METHODS as IMPORTED_METHODS

    TASKS.update({task: {"kind": "multiple_choice", "scoring": "continuation", "methods": IMPORTED_METHODS}
                  for task in sorted({t for r in IMPORTS.values() for t in r})})
SELF_EVAL_TASKS = [task for task in REGULAR_TASKS if self_eval_methods(task)]
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
    return [MODELS[model].folder] if MODELS[model].folder else []


def eval_task_tables():
    """Task tables whose facts the offline instruction and preference sets must not teach."""
    return [f"results/data/{t}.parquet" for t in TASKS if TASKS[t]["kind"] != "clm"]


def align_base():
    """(model, revision) that the align stage tunes."""
    tuned = next(iter(TUNED.values()))
    return tuned.parent, tuned.parent_revision


def policy():
    """(model, revision) that preference optimisation starts from: the tuned policy at its last epoch."""
    preference = MODELS[next(iter(ALIGNED_NAMES.values()))]
    return preference.parent, preference.parent_revision


def policy_dir():
    """The training output of the tuned policy (the rules read its revision policy()[1])."""
    return training_output(policy()[0])[0]


RUN_PLACEMENT = ("parallel", "resources")  # keys of a training run's section that say where it runs, not what it learns


def tuning_of(wc):
    """The supervised tuning method (full or lora) of the tuned model {tuned}."""
    return TUNED[wc.tuned].labels["tuning"]


def training_section(run):
    """The config section of a training run: tuning.<method>, or preference.reward|rlhf|dpo."""
    return ALIGN["tuning"][run] if run in ALIGN["tuning"] else PREFERENCE[run]


def training_settings(run):
    """What a training run learns with: its section less the keys of RUN_PLACEMENT."""
    return canonical({k: v for k, v in training_section(run).items() if k not in RUN_PLACEMENT})


BATCH_KEYS = ("batch_size", "gradient_accumulation_steps")  # a tuning method may set its own


def tuning_settings(method):
    """lr, lora (the adapter's settings; {} for full tuning) and training (epochs, batches, max_length) of
    a supervised tuning method: align's, with the method's own lr and batch keys over them."""
    own = training_settings(method)
    training = {k: own.get(k, ALIGN[k]) for k in ("epochs", *BATCH_KEYS, "max_length")}
    return {"lr": own["lr"], "lora": canonical({k: v for k, v in own.items() if k not in ("lr", *BATCH_KEYS)}),
            "training": canonical(training)}


def training_parallel(run):
    """The processes of a training run: align.parallel, overridden key by key by the run's own."""
    return canonical({**ALIGN["parallel"], **training_section(run).get("parallel", {})})


def training_resources(run):
    """The cluster resources of a training job: align.resources, overridden key by key by the run's
    own; with GPUs, one for each of its processes."""
    res = {**ALIGN["resources"], **training_section(run).get("resources", {})}
    return {"mem_mb": res["mem_mb"], "gpu": res["gpu"] * training_parallel(run)["processes"], "runtime": res["runtime"]}


def primary_methods():
    """The first configured confidence method of every task: the one the study's figures use (keys
    sorted: as a rule's params, the order of the tasks in the config must not rerun it)."""
    return canonical({t: methods_of(t)[0] for t in TASKS})


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


def comparison_pairs():
    """The model pairs of results/metrics/comparisons.csv, each {comparison, a, b} (differences are b - a):
    every aligned model's revisions against the base revision it was tuned from, consecutive revisions of
    every model, and consecutive sizes of every suite of `figures.suites` (base models of a family and
    data variant, in config order, each at its last revision)."""
    pairs = []

    def pair(kind, a, b):
        pairs.append({"comparison": kind, "a": {"model": a[0], "revision": a[1]}, "b": {"model": b[0], "revision": b[1]}})

    for name, model in ALIGNED.items():
        for revision in model.revision_names:
            pair("aligned_vs_base", REGISTRY.base_of(name), (name, revision))
    for name, model in MODELS.items():
        revisions = model.ordered_revisions()
        for a, b in zip(revisions, revisions[1:]):
            pair("consecutive_checkpoints", (name, a), (name, b))
    for family in config["figures"].get("suites", []):
        variants = {}
        for name, model in MODELS.items():
            if model.labels.get("family") == family and model.labels.get("stage", "base") == "base":
                variants.setdefault(model.labels.get("data"), []).append((name, model.ordered_revisions()[-1]))
        for members in variants.values():
            for a, b in zip(members, members[1:]):
                pair("consecutive_sizes", a, b)
    return pairs


def alignment_models():
    """The models of the alignment figure, in order: the base at its tuned revision, then every
    supervised run, then DPO and RLHF (last), as {model: [revisions]}."""
    base, revision = align_base()
    order = {base: [revision]}
    order.update({name: model.revision_names for name, model in TUNED.items()})
    order.update({ALIGNED_NAMES[s]: ALIGNED[ALIGNED_NAMES[s]].revision_names for s in ("dpo", "rlhf") if s in ALIGNED_NAMES})
    return order
