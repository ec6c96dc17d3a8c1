"""The study a config describes: its models (registry.py), tasks, runs, confidence methods, the settings of
every stage, the comparison pairs, and what the figures need. The rules read it (rules/common.smk builds one
``Study`` from the validated config); tests import it instead of copying it. Building one checks what the
schema cannot (dataset keys, confidence methods, imported tasks' names, the names it makes: names.py), with one
line naming the key (ConfigError); ``check_inputs`` then finds, still before any job, the local files, folders and
packages that the jobs would find missing (datasets, model sources, TruthfulQA's targets, MMLU's dev rows)."""
from __future__ import annotations

import difflib
import re
import sys
from functools import cached_property

from .names import NAME_PATTERN, check_name
from .registry import ALIGNED, build_registry

# The names the workflow makes from the config's, by the registry's origin of their model (registry.py).
MADE_NAMES = {"pretrain": "pretrain: model name <family>-<size>-<data>",
              "tune": "align: model name <base>-sft-<set>-<tuning>", "rlhf": "align: model name <base>-rlhf",
              "dpo": "align: model name <base>-dpo"}

# The keys of a training run's config section that say where it runs, not what it learns.
RUN_PLACEMENT = ("parallel", "resources")
BATCH_KEYS = ("batch_size", "gradient_accumulation_steps")  # a tuning method may set its own
INFERENCE_KEYS = ("window", "window_mode", "max_new_tokens", "stop", "chat")  # a task's keys that shape inference
SELF_EVAL_KEYS = ("backend", "batch_size", "add_bos", "device", "dtype")  # first-pass settings the second pass shares


class ConfigError(ValueError):
    """A config the workflow cannot run: one line, naming the key (the Snakefile prints it and stops)."""


def schema_error(config: dict, schema_path) -> str | None:
    """The config's first violation of the schema as one line naming the key, or None: an unknown key with the
    nearest known one, a key of another kind's tasks with the kinds it belongs to (the schema's description)."""
    import jsonschema
    import yaml

    with open(schema_path) as f:
        validator = jsonschema.Draft202012Validator(yaml.safe_load(f))
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return None
    message = error.message
    if error.validator == "pattern" and error.validator_value == NAME_PATTERN:  # the name rule, said in words
        try:
            check_name("name", error.instance)
        except ValueError as bad:
            message = str(bad)
    elif error.validator == "not" and "description" in error.validator_value:  # `window` on a multiple-choice task
        message = f"`{error.absolute_path[-1]}` is {error.validator_value['description']}"
    elif error.validator == "additionalProperties" and error.validator_value is False:
        message = _unknown_key(error.instance, error.schema)
    return f"config: {'.'.join(map(str, error.absolute_path)) or '(top level)'}: {message}"


def _unknown_key(instance: dict, schema: dict) -> str:
    """The first key of ``instance`` that ``schema`` does not allow, with the nearest allowed key, or them all."""
    allowed = list(schema.get("properties", {}))
    patterns = list(schema.get("patternProperties", {}))
    unknown = next(k for k in instance if k not in allowed and not any(re.search(p, k) for p in patterns))
    if nearest := difflib.get_close_matches(unknown, allowed, n=1):
        return f"unknown key `{unknown}`; did you mean `{nearest[0]}`?"
    return f"unknown key `{unknown}`; known keys: {', '.join(allowed)}"


def check_names(config: dict) -> None:
    """Every name of the config that reaches a path follows the name rule (names.py): a model, revision, task,
    import, imported task, pretrain family, size and data variant, instruction set and tuning method; a name that
    does not raises ConfigError with one line naming the key and the name."""
    names = [("models", "model name", m) for m in config["models"]]
    names += [(f"models.{m}.revisions", "revision", r) for m, e in config["models"].items() for r in e["revisions"]]
    names += [("tasks", "task name", t) for t in config["tasks"]]
    names += [("imports", "model name", m) for m in config["imports"]]
    names += [(f"imports.{m}.tasks", "task name", t) for m, run in config["imports"].items()
              for t in run.get("tasks", [])]
    if pretrain := config.get("pretrain"):
        names += [("pretrain.family", "family", pretrain["family"])]
        names += [("pretrain.sizes", "size", size) for size in pretrain["sizes"]]
        names += [("pretrain.data", "data variant", data) for data in pretrain["data"]]
    if align := config.get("align"):
        names += [("align.instructions", "instruction set", name) for name in align["instructions"]]
        names += [("align.tuning", "tuning method", name) for name in align["tuning"]]
    for key, kind, name in names:
        try:
            check_name(kind, name)
        except ValueError as error:
            raise ConfigError(f"config: {key}: {error}") from None


def check_made_names(registry) -> None:
    """The names of the models trained here and their revisions, made from the config's (registry.py), follow the
    name rule too (a long base name may make one too long): ConfigError naming the pattern and the name."""
    for name, model in registry.of(*MADE_NAMES).items():
        try:
            check_name(MADE_NAMES[model.origin], name)
            for revision in model.revision_names:
                check_name(f"revision of model {name!r}", revision)
        except ValueError as error:
            raise ConfigError(f"config: {error}") from None


def canonical(value):
    """A config value with its mappings' keys sorted: Snakemake compares params as text, and the order of keys
    in a YAML file must not make a job look changed."""
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def group_name(*parts) -> str:
    """A name of a group of runs, safe in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(map(str, parts)))


def check_datasets(config: dict) -> None:
    """The dataset options of every task, instruction set and preference set, each checked against its
    format's keys: a misspelled one raises ConfigError with one line naming it."""
    from .align_data import check_instruction_set, check_preference_data
    from .tables import DatasetError
    from .tasks import check_dataset_keys

    align = config.get("align", {})
    try:
        for name, task in config["tasks"].items():
            check_dataset_keys(name, task["kind"], task["dataset"])
        for name, dataset in align.get("instructions", {}).items():
            check_instruction_set(name, dataset)
        if align.get("preference"):
            check_preference_data(align["preference"]["data"])
    except DatasetError as error:
        raise ConfigError(f"config: {error}") from None


def check_task_inputs(config: dict) -> None:
    """What prepare_task would find wrong in a task's data without the hub, found before any job with the job's own
    checks and its line: TruthfulQA's `targets`; for a local dataset, a path or glob that matches no file, and,
    for multiple choice (its loader reads its files: question sets are small), a subject with no file or fewer
    `dev` rows than `shots`. A `hub` dataset's files are checked by its job, after the download."""
    from .tables import DatasetError, expand_files
    from .tasks import FORMATS, check_shots, dataset_paths
    from .tasks.multiple_choice import check_targets

    for name, task in config["tasks"].items():
        dataset = task["dataset"]
        fmt = FORMATS[task["kind"], dataset["format"]]
        try:
            if fmt.name == "truthfulqa_mc":
                check_targets(name, dataset)
            if "hub" in dataset:
                continue
            if fmt.shots is None:  # clm and generation: the files exist
                for pattern in dataset_paths(dataset):
                    expand_files(pattern)
            elif task.get("limit") != 0:
                for subject in fmt.load(dataset, {}, config["seed"], name):
                    check_shots(subject, fmt.shots if task.get("shots") is None else task["shots"])
        except DatasetError as error:
            raise ConfigError(f"config: {error}" if str(error).startswith("task ") else
                              f"config: task {name!r}: {error}") from None


def check_task_methods(config: dict) -> None:
    """Every task's confidence methods are known for its kind and scoring: an unknown one raises ConfigError."""
    from .confidence import check_methods
    from .tasks import task_scoring

    for name, task in config["tasks"].items():
        if "methods" in task:
            try:
                check_methods(task["kind"], task_scoring(task), task["methods"])
            except ValueError as error:
                raise ConfigError(f"config: tasks.{name}.methods: {error}") from None


def imported_runs(config: dict) -> dict[str, dict[str, str]]:
    """The lm-evaluation-harness runs of config `imports`: model -> {task: samples file} of their
    multiple-choice tasks; every other task is skipped with a line saying why."""
    if not config["imports"]:
        return {}
    from .imports import find_samples, output_type

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


class Study:
    """Everything the rules derive from one validated config (the schema's defaults filled in)."""

    def __init__(self, config: dict):
        check_names(config)
        pretrain = config.get("pretrain", {})
        if pretrain and pretrain["checkpoints"][-1] != pretrain["steps"]:
            raise ConfigError(f"config: pretrain.checkpoints: must end with steps ({pretrain['steps']}), "
                             f"got {pretrain['checkpoints']}")
        check_datasets(config)
        check_task_methods(config)
        self.config = config
        self.align = config.get("align", {})
        self.preference = self.align.get("preference", {})
        self.regular_tasks = sorted(config["tasks"])  # the tasks this workflow builds and runs models on
        self.task_config = dict(config["tasks"])  # and, below, the tasks of imported harness runs
        try:
            self.registry = build_registry(config)
        except ValueError as error:  # a model of the config the registry cannot place
            raise ConfigError(str(error)) from None
        check_made_names(self.registry)
        self.models = self.registry.models
        self.pretrained = self.registry.of("pretrain")
        self.tuned = self.registry.of("tune")
        self.aligned = self.registry.of(*ALIGNED)
        self.aligned_names = {m.origin: name for name, m in self.aligned.items() if m.origin in ("rlhf", "dpo")}
        self.imports = imported_runs(config)
        self.imported_tasks = sorted({t for run in self.imports.values() for t in run})
        if clash := set(self.imported_tasks) & set(self.task_config):
            raise ConfigError(f"config: imports: {sorted(clash)} are also names of tasks; rename them")
        if self.imports:
            from .imports import IMPORTED_METHODS

            self.task_config.update({task: {"kind": "multiple_choice", "scoring": "continuation",
                                            "methods": IMPORTED_METHODS} for task in self.imported_tasks})
        self.tasks = list(self.task_config)
        self.evaluated = [name for name, model in self.models.items() if model.origin != "imports"]
        self.runs = [(task, model, revision) for task in self.regular_tasks for model in self.evaluated
                     for revision in self.models[model].revision_names]
        self.runs += [(task, model, "lm_eval") for model in self.imports for task in sorted(self.imports[model])]
        if not self.runs:
            raise ConfigError("config: nothing to evaluate: add models and tasks (or a `pretrain` suite, or `imports`)")
        self.self_eval_tasks = [task for task in self.regular_tasks if self.self_eval_methods(task)]

    def check_inputs(self) -> None:
        """The local data and model sources that the jobs would find missing, found now (check_task_inputs, and
        sources.check_source on every revision of the config's models: a missing `local:` folder or revision,
        a GGUF source at a revision other than main, or a GGUF file or package file that is not there):
        ConfigError with the job's line. The rules call it once the study is built; what needs the hub is left to
        the jobs."""
        from .sources import SourceError, check_source

        check_task_inputs(self.config)
        for name, model in self.registry.of("config").items():
            for revision in model.revision_names:
                try:
                    check_source(model.source, revision)
                except SourceError as error:
                    raise ConfigError(f"config: models.{name}: {error}") from None

    def check_gpus(self, lent: int) -> None:
        """ConfigError naming the first job that asks for more GPUs than the machine lends (``lent``: Snakemake's
        `resources: gpu`, from a profile or --resources), which Snakemake would cut down to ``lent`` without a
        word: a model's inference (models.<m>.resources.gpu), a training run (its GPUs for each of its processes)."""
        for name, model in self.models.items():
            if (asked := model.resources.get("gpu", 0)) > lent:
                raise ConfigError(f"config: models.{name}.resources.gpu: its jobs ask for {asked} GPUs, the machine "
                                  f"lends {lent} (resources: gpu)")
        runs = [*self.align.get("tuning", {}), *(run for run in ("reward", "rlhf", "dpo") if run in self.preference)]
        for run in runs:
            if (asked := self.training_resources(run)["gpu"]) > lent:
                section = f"align.tuning.{run}" if run in self.align["tuning"] else f"align.preference.{run}"
                raise ConfigError(f"config: {section}: its training job asks for {asked} GPUs (resources.gpu x "
                                  f"parallel.processes), the machine lends {lent} (resources: gpu)")

    # ------------------------------------------------------------------ tasks and methods
    def kind(self, task: str) -> str:
        return self.task_config[task]["kind"]

    def task_methods(self, task: str) -> list[str]:
        """The confidence methods of a task: its `methods`, else those that apply to its kind and scoring."""
        from .confidence import default_methods
        from .tasks import task_scoring

        own = self.task_config[task]
        return own.get("methods") or default_methods(own["kind"], task_scoring(own))

    def self_eval_methods(self, task: str) -> list[str]:
        """The task's methods that the second inference pass serves (p_true, verbalized)."""
        from .confidence import SELF_EVAL_METHODS

        return [m for m in self.task_methods(task) if m in SELF_EVAL_METHODS]

    @cached_property
    def methods(self) -> dict[str, str]:
        """The first confidence method of every task, the one the figures use (keys sorted: as a rule's params,
        the order of the config's tasks must not rerun it)."""
        return canonical({t: self.task_methods(t)[0] for t in self.tasks})

    def prompting(self, task: str) -> dict:
        """The task's keys that shape a multiple-choice table's prompts and options: only those set, so that an
        unset one is the format's default."""
        from .tasks import PROMPTING_KEYS

        return {k: self.task_config[task][k] for k in PROMPTING_KEYS if k in self.task_config[task]}

    def inference_settings(self, task: str, model: str) -> dict:
        """Everything that shapes the raw log-probabilities of a model on a task (config `inference` less
        threads, then the task's own keys, then the model's)."""
        settings = {k: v for k, v in self.config["inference"].items() if k != "threads"}  # threads: the rule's
        settings.update({k: self.task_config[task][k] for k in INFERENCE_KEYS if k in self.task_config[task]})
        settings.update(self.models[model].inference)
        return canonical(settings)

    def self_eval_prompts(self) -> dict[str, str]:
        """The second pass's prompts by method (self_eval.PROMPTS): a changed prompt reruns that pass."""
        from .self_eval import PROMPTS

        return dict(PROMPTS)

    def self_eval_settings(self, task: str, model: str) -> dict:
        """What shapes a task's second pass on a model: the first pass's batch size, BOS, device and dtype, and
        the verbalized reply's length (config self_eval)."""
        settings = self.inference_settings(task, model)
        return canonical({**{k: settings[k] for k in SELF_EVAL_KEYS},
                          "max_new_tokens": self.config["self_eval"]["max_new_tokens"]})

    def first_import(self, task: str) -> str:
        """The samples file of an imported task that its task table is built from (the first model's)."""
        return next(self.imports[model][task] for model in self.imports if task in self.imports[model])

    # ------------------------------------------------------------------ alignment
    def align_base(self) -> tuple[str, str]:
        """(model, revision) that the align stage tunes."""
        tuned = next(iter(self.tuned.values()))
        return tuned.parent, tuned.parent_revision

    def policy(self) -> tuple[str, str]:
        """(model, revision) that preference optimisation starts from: the tuned policy at its last epoch."""
        preference = self.models[next(iter(self.aligned_names.values()))]
        return preference.parent, preference.parent_revision

    def policy_dir(self) -> str:
        """The training output of the tuned policy (the rules read its revision policy()[1])."""
        return self.training_output(self.policy()[0])[0]

    def training_output(self, model: str) -> list[str]:
        """The folder a model trained here is read from: the suite's or the align stage's (none for others)."""
        return [self.models[model].folder] if self.models[model].folder else []

    def tuning_of(self, tuned: str) -> str:
        """The supervised tuning method (full or lora) of the tuned model ``tuned``."""
        return self.tuned[tuned].labels["tuning"]

    def training_section(self, run: str) -> dict:
        """The config section of a training run: tuning.<method>, or preference.reward|rlhf|dpo."""
        return self.align["tuning"][run] if run in self.align["tuning"] else self.preference[run]

    def training_settings(self, run: str) -> dict:
        """What a training run learns with: its section less the keys of RUN_PLACEMENT."""
        return canonical({k: v for k, v in self.training_section(run).items() if k not in RUN_PLACEMENT})

    def tuning_settings(self, method: str) -> dict:
        """lr, lora (the adapter's settings; {} for full tuning) and training (epochs, batches, max_length) of a
        supervised tuning method: align's, with the method's own lr and batch keys over them."""
        own = self.training_settings(method)
        training = {k: own.get(k, self.align[k]) for k in ("epochs", *BATCH_KEYS, "max_length")}
        return {"lr": own["lr"], "lora": canonical({k: v for k, v in own.items() if k not in ("lr", *BATCH_KEYS)}),
                "training": canonical(training)}

    def training_parallel(self, run: str) -> dict:
        """The processes of a training run: align.parallel, overridden key by key by the run's own."""
        return canonical({**self.align["parallel"], **self.training_section(run).get("parallel", {})})

    def training_resources(self, run: str) -> dict:
        """The cluster resources of a training job: align.resources, overridden key by key by the run's own;
        with GPUs, one for each of its processes."""
        res = {**self.align["resources"], **self.training_section(run).get("resources", {})}
        return {"mem_mb": res["mem_mb"], "gpu": res["gpu"] * self.training_parallel(run)["processes"],
                "runtime": res["runtime"]}

    # ------------------------------------------------------------------ comparisons
    def comparison_pairs(self) -> list[dict]:
        """The model pairs of results/metrics/comparisons.csv, each {comparison, a, b} (differences are b - a):
        every aligned model's revisions against the base revision it was tuned from, consecutive revisions of
        every model, and consecutive sizes of every suite of `figures.suites` (base models of a family and data
        variant, in config order, each at its last revision)."""
        pairs = []

        def pair(kind, a, b):
            pairs.append({"comparison": kind, "a": {"model": a[0], "revision": a[1]},
                          "b": {"model": b[0], "revision": b[1]}})

        for name, model in self.aligned.items():
            for revision in model.revision_names:
                pair("aligned_vs_base", self.registry.base_of(name), (name, revision))
        for name, model in self.models.items():
            revisions = model.ordered_revisions()
            for a, b in zip(revisions, revisions[1:]):
                pair("consecutive_checkpoints", (name, a), (name, b))
        for family in self.suites:
            variants = {}
            for name, model in self.models.items():
                if model.labels.get("family") == family and model.labels.get("stage", "base") == "base":
                    variants.setdefault(model.labels.get("data"), []).append((name, model.ordered_revisions()[-1]))
            for members in variants.values():
                for a, b in zip(members, members[1:]):
                    pair("consecutive_sizes", a, b)
        return pairs

    # ------------------------------------------------------------------ what the figures show
    @property
    def suites(self) -> list[str]:
        return list(self.config["figures"].get("suites", []))

    @property
    def dynamics(self) -> list[str]:
        return list(self.config["figures"].get("dynamics", []))

    @cached_property
    def alignment(self) -> dict[str, list[str]]:
        """The models of the alignment figure, in order: the base at its tuned revision, then every supervised
        run, then DPO and RLHF (last), as {model: [revisions]}; {} without an align section."""
        if not self.align:
            return {}
        base, revision = self.align_base()
        order = {base: [revision]}
        order.update({name: model.revision_names for name, model in self.tuned.items()})
        order.update({self.aligned_names[s]: self.aligned[self.aligned_names[s]].revision_names
                      for s in ("dpo", "rlhf") if s in self.aligned_names})
        return order

    @property
    def n_runs(self) -> int:
        """The number of distinct (model, revision) runs."""
        return len({(m, r) for _, m, r in self.runs})

    @property
    def pretrained_variants(self) -> dict[str, str]:
        return {name: model.labels["data"] for name, model in self.pretrained.items()}

    @property
    def pretrained_dirs(self) -> list[str]:
        return [f"results/pretrain/models/{m}" for m in self.pretrained]

    @cached_property
    def reliability_groups(self) -> dict[str, dict[str, list[list[str]]]]:
        """task -> {group: [[model, revision], ...]}: the runs of each figure of reliability diagrams. Every base
        model with several revisions has a group of its own, <model>-training (every revision); the other runs go
        by family and stage, <family>-<stage> ('other' without a family; base models at their last revision, tuned
        ones at every revision); a family's base group where all its models have a training group is left out."""
        groups = {}
        for task, model, revision in self.runs:
            entry = self.models[model]
            family = entry.labels.get("family") or "other"
            stage = entry.labels.get("stage") or "base"
            names = []
            if stage == "base" and len(entry.revisions) > 1:
                names.append(group_name(model, "training"))
            if stage != "base" or revision == entry.ordered_revisions()[-1]:
                names.append(group_name(family, stage))
            for name in names:
                groups.setdefault(task, {}).setdefault(name, []).append([model, revision])
        for named in groups.values():
            trained = {runs[0][0] for name, runs in named.items() if name.endswith("-training")}
            for name in [n for n, runs in named.items() if not n.endswith("-training") and
                         all(self.models[m].labels.get("stage", "base") == "base" for m, _ in runs) and
                         {m for m, _ in runs} <= trained]:
                del named[name]
        return groups

    # predicates: whether the config asks for a figure or table
    always = True

    @property
    def has_suites(self) -> bool:
        return bool(self.suites)

    @property
    def has_dynamics(self) -> bool:
        return bool(self.dynamics)

    @property
    def has_pretrained(self) -> bool:
        return bool(self.pretrained)

    @property
    def has_alignment(self) -> bool:
        return bool(self.align)

    @property
    def has_preference(self) -> bool:
        return bool(self.aligned_names)

    @property
    def recalibrating(self) -> bool:
        return bool(self.config["recalibration"]["methods"])

    @property
    def has_comparisons(self) -> bool:
        return self.recalibrating or bool(self.comparison_pairs())
