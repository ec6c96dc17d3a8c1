"""Every figure and table of the plot stage, declared once as data: rules/figures.smk makes one rule of each
that the config asks for (inputs, params, log, report caption and category), ``figure_targets`` lists them for
`rule all`, and rules/scripts/plot.py calls each one's function. Imports no matplotlib: the workflow reads it
while it parses."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import partial
from operator import attrgetter

# The report's categories, in the order its menu lists them (by name).
OVERVIEW, PRETRAINING, ALIGNMENT, PER_TASK, ANALYSIS = (
    "1. Overview", "2. Pretraining", "3. Alignment", "4. Per task", "5. Analysis")

INPUTS = {  # a function's argument -> the file it reads, or the Study attribute listing the files
    "summary_path": "results/metrics/summary.parquet",
    "reliability_path": "results/metrics/reliability.parquet",
    "curves_path": "results/metrics/curves.parquet",
    "comparisons_path": "results/metrics/comparisons.csv",
    "diversity_map_path": "results/align/diversity_map.parquet",
    "diversity_path": "results/metrics/diversity.csv",
    "model_dirs": attrgetter("pretrained_dirs"),  # the suite trained here
}
STUDY_VALUES = {  # a rule's param -> its value, from the Study (workflow_scripts/study.py) and the job's wildcards
    "methods": lambda study, wildcards: study.methods,
    "suites": lambda study, wildcards: study.suites,
    "dynamics": lambda study, wildcards: study.dynamics,
    "alignment": lambda study, wildcards: study.alignment,
    "variants": lambda study, wildcards: study.pretrained_variants,
    "n_runs": lambda study, wildcards: study.n_runs,
    "groups": lambda study, wildcards: study.reliability_groups[wildcards.task],
    "runs": lambda study, wildcards: study.reliability_groups[wildcards.task][wildcards.group],
    "task_methods": lambda study, wildcards: study.task_methods(wildcards.task),
}
WILDCARDS = {None: (), "task": ("task",), "group": ("task", "group")}  # a figure's `per` -> its wildcards


def figure_files(stem: str) -> dict[str, str]:
    """The PNG and PDF of a figure, results/figures/<stem>.png|pdf, by argument."""
    return {"png_out": f"results/figures/{stem}.png", "pdf_out": f"results/figures/{stem}.pdf"}


@dataclass(frozen=True)
class Figure:
    """A figure or table: its rule calls ``plots.<module>.<function>`` with its inputs, params (``params``
    only; ``caption_params`` are for the caption), wildcards and outputs as keyword arguments."""

    name: str  # the rule is plot_<name> (unless `rule` names it)
    module: str  # the plots module that draws it: its import closure is the rule's code
    function: str
    inputs: tuple[str, ...]  # keys of INPUTS
    params: tuple[str, ...]  # keys of STUDY_VALUES
    outputs: dict[str, str]  # argument -> path; the first is the one in the report and in `rule all`
    caption: str  # report/<caption>.rst
    category: str  # the report's category; per task ones (PER_TASK) have the task as subcategory
    labels: dict[str, str]
    per: str | None = None  # a key of WILDCARDS: one per task, or per group of runs of a task
    when: str = "always"  # the Study predicate that says whether the config asks for it
    caption_params: tuple[str, ...] = ()  # keys of STUDY_VALUES that only the caption reads
    rule: str = ""  # the rule's name, where it is not plot_<name>

    def __post_init__(self):
        if not self.rule:
            object.__setattr__(self, "rule", f"plot_{self.name}")

    @property
    def wildcards(self) -> tuple[str, ...]:
        return WILDCARDS[self.per]

    @property
    def job_path(self) -> str:
        """<rule>[/{task}[/{group}]]: where a job's log and benchmark go, below results/logs and results/benchmarks."""
        return "/".join([self.rule, *(f"{{{w}}}" for w in self.wildcards)])

    @property
    def log(self) -> str:
        return f"results/logs/{self.job_path}.log"

    @property
    def benchmark(self) -> str:
        return f"results/benchmarks/{self.job_path}.tsv"

    @property
    def subcategory(self) -> str | None:
        return "{task}" if self.category == PER_TASK else None

    @property
    def reported(self) -> str:
        """The output in the report (the first)."""
        return next(iter(self.outputs))

    def input_files(self, study) -> dict:
        """The rule's inputs, by argument."""
        return {name: INPUTS[name](study) if callable(INPUTS[name]) else INPUTS[name] for name in self.inputs}

    def param_functions(self, study) -> dict:
        """The rule's params (those the caption reads too), by name, each a function of the job's wildcards."""
        return {name: partial(STUDY_VALUES[name], study) for name in (*self.params, *self.caption_params)}

    def asked(self, study) -> bool:
        """Whether the config asks for it (its rule exists only then)."""
        return bool(getattr(study, self.when))

    def targets(self, study) -> list[str]:
        """The first output of every job the config asks for."""
        if not self.asked(study):
            return []
        path = self.outputs[self.reported]
        if self.per == "task":
            return [path.format(task=task) for task in study.tasks]
        if self.per == "group":
            return [path.format(task=task, group=group)
                    for task, groups in study.reliability_groups.items() for group in groups]
        return [path]

    def draw(self):
        """The function that makes it (importing its plots module, and so matplotlib)."""
        return getattr(importlib.import_module(f"{__package__}.{self.module}"), self.function)


FIGURES = (
    Figure("summary", "overview", "plot_summary", ("summary_path",), ("methods",), figure_files("summary"),
           "summary", OVERVIEW, {"figure": "accuracy and ECE of every run (heatmap)"}, caption_params=("n_runs",)),
    Figure("summary_table", "overview", "write_summary_table", ("summary_path",), (),
           {"html_out": "results/metrics/summary.html"}, "summary_table", OVERVIEW, {"figure": "summary.csv (table)"}),
    Figure("scale", "pretraining", "plot_scale", ("summary_path", "comparisons_path"), ("suites", "methods"),
           figure_files("scale"), "scale", PRETRAINING,
           {"figure": "accuracy and ECE against size", "task": "all tasks"}, when="has_suites"),
    Figure("dynamics", "pretraining", "plot_dynamics", ("summary_path", "comparisons_path"), ("dynamics", "methods"),
           figure_files("dynamics"), "dynamics", PRETRAINING,
           {"figure": "accuracy and ECE along training", "task": "all tasks"}, when="has_dynamics"),
    Figure("reliability_scale", "pretraining", "plot_reliability_scale",
           ("summary_path", "reliability_path", "curves_path"), ("suites", "methods"),
           figure_files("reliability_scale_{task}"), "reliability_scale", PRETRAINING,
           {"figure": "reliability across sizes", "task": "{task}"}, per="task", when="has_suites"),
    Figure("pretrain_loss", "pretraining", "plot_pretrain_loss", ("model_dirs",), ("variants",),
           {**figure_files("pretrain_loss"), "table_out": "results/pretrain/loss.csv"}, "pretrain_loss", PRETRAINING,
           {"figure": "pretraining loss", "task": "(training data)"}, when="has_pretrained"),
    Figure("alignment", "alignment", "plot_alignment", ("summary_path", "comparisons_path"), ("alignment", "methods"),
           figure_files("alignment"), "alignment", ALIGNMENT, {"figure": "accuracy and ECE along alignment"},
           when="has_alignment"),
    Figure("rlhf_table", "alignment", "write_rlhf_table", ("summary_path",), ("alignment", "methods"),
           {"csv_out": "results/metrics/rlhf.csv"}, "rlhf", ALIGNMENT,
           {"figure": "preference optimisation per epoch (table)"}, when="has_preference", rule="rlhf_table"),
    Figure("diversity", "alignment", "plot_diversity", ("diversity_map_path", "diversity_path"), (),
           figure_files("diversity"), "diversity", ALIGNMENT, {"figure": "diversity of the instruction sets"},
           when="has_alignment"),
    Figure("reliability", "reliability", "plot_reliability_index", ("summary_path", "curves_path"),
           ("groups", "methods"), figure_files("reliability_{task}"), "reliability_index", PER_TASK,
           {"figure": "reliability", "models": "all groups (smooth curves)"}, per="task"),
    Figure("reliability_group", "reliability", "plot_reliability", ("summary_path", "reliability_path", "curves_path"),
           ("runs", "methods"), figure_files("reliability/{task}/{group}"), "reliability", PER_TASK,
           {"figure": "reliability", "models": "{group}"}, per="group", caption_params=("task_methods",)),
    Figure("risk_coverage", "analysis", "plot_risk_coverage", ("summary_path", "curves_path"),
           ("suites", "dynamics", "alignment", "methods"), figure_files("risk_coverage_{task}"), "risk_coverage",
           PER_TASK, {"figure": "risk-coverage", "models": "all"}, per="task"),
    Figure("recalibration", "analysis", "plot_recalibration", ("summary_path",),
           ("suites", "dynamics", "alignment", "methods"), figure_files("recalibration"), "recalibration", ANALYSIS,
           {"figure": "recalibration"}, when="recalibrating"),
    Figure("metric_agreement", "analysis", "plot_metric_agreement", ("comparisons_path",), (),
           figure_files("metric_agreement"), "metric_agreement", ANALYSIS,
           {"figure": "agreement of the calibration metrics"}, when="has_comparisons"),
)
FIGURES_BY_RULE = {figure.rule: figure for figure in FIGURES}


def figure_targets(study) -> list[str]:
    """Every figure and table the config asks for (for `rule all`)."""
    return [target for figure in FIGURES for target in figure.targets(study)]
