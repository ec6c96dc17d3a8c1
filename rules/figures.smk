# Stage 4: figures for the paper and for Snakemake's report (snakemake --report report.html).

import re

report: "../report/workflow.rst"


# The report's categories, in the order its menu lists them (by name).
OVERVIEW, PRETRAINING, ALIGNMENT, PER_TASK, ANALYSIS = (
    "1. Overview", "2. Pretraining", "3. Alignment", "4. Per task", "5. Analysis")


def group_name(*parts):
    """A name of a group of runs, safe in a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(map(str, parts)))


def reliability_groups():
    """task -> {group: [[model, revision], ...]}: the runs of each figure of reliability diagrams.
    Every base model with several revisions has a group of its own, <model>-training (every
    revision); the other runs go by family and stage, <family>-<stage> ('other' without a family;
    base models at their last revision, tuned ones at every revision); a family's base group where
    all its models have a training group is left out."""
    groups = {}
    for task, model, revision in RUNS:
        entry = MODELS[model]
        family = entry.labels.get("family") or "other"
        stage = entry.labels.get("stage") or "base"
        names = []
        if stage == "base" and len(entry.revisions) > 1:
            names.append(group_name(model, "training"))
        if stage != "base" or revision == entry.ordered_revisions()[-1]:
            names.append(group_name(family, stage))
        for name in names:
            groups.setdefault(task, {}).setdefault(name, []).append([model, revision])
    for task, named in groups.items():
        trained = {runs[0][0] for name, runs in named.items() if name.endswith("-training")}
        for name in [n for n, runs in named.items() if not n.endswith("-training") and
                     all(MODELS[m].labels.get("stage", "base") == "base" for m, _ in runs) and
                     {m for m, _ in runs} <= trained]:
            del named[name]
    return groups


RELIABILITY_GROUPS = reliability_groups()


def reliability_figures():
    """Every task's index of reliability diagrams and its figure of reliability diagrams per group."""
    targets = [f"results/figures/reliability_{t}.png" for t in TASKS]
    targets += [f"results/figures/reliability/{t}/{g}.png" for t, named in RELIABILITY_GROUPS.items() for g in named]
    return targets


def overview_targets():
    """The overview heatmap and the summary as a table for the report."""
    return ["results/figures/summary.png", "results/metrics/summary.html"]


def analysis_figures():
    """The figures of the calibration analysis: recalibration (where the config recalibrates), the
    risk-coverage curves of every task, and the agreement of the metrics (where there is a comparison)."""
    recalibrating = bool(config["recalibration"]["methods"])
    targets = ["results/figures/recalibration.png"] if recalibrating else []
    targets += [f"results/figures/risk_coverage_{t}.png" for t in TASKS]
    if recalibrating or comparison_pairs():
        targets += ["results/figures/metric_agreement.png"]
    return targets


rule plot_reliability:
    input:
        code=code("plots"),
        summary="results/metrics/summary.parquet",
        curves="results/metrics/curves.parquet",
    output:
        png=report("results/figures/reliability_{task}.png", caption="../report/reliability_index.rst",
                   category=PER_TASK, subcategory="{task}",
                   labels={"figure": "reliability", "models": "all groups (smooth curves)"}),
        pdf="results/figures/reliability_{task}.pdf",
    params:
        groups=lambda wc: RELIABILITY_GROUPS[wc.task],
        methods=primary_methods(),
    log:
        "results/logs/plot_reliability/{task}.log",
    benchmark:
        "results/benchmarks/plot_reliability/{task}.tsv"
    resources:
        mem_mb=2000,
    script:
        "scripts/plot_reliability_index.py"


rule plot_reliability_group:
    input:
        code=code("plots"),
        summary="results/metrics/summary.parquet",
        reliability="results/metrics/reliability.parquet",
        curves="results/metrics/curves.parquet",
    output:
        png=report("results/figures/reliability/{task}/{group}.png", caption="../report/reliability.rst",
                   category=PER_TASK, subcategory="{task}", labels={"figure": "reliability", "models": "{group}"}),
        pdf="results/figures/reliability/{task}/{group}.pdf",
    wildcard_constraints:
        group=one_of(sorted({g for named in RELIABILITY_GROUPS.values() for g in named})),
    params:
        runs=lambda wc: RELIABILITY_GROUPS[wc.task][wc.group],
        methods=primary_methods(),
        task_methods=lambda wc: methods_of(wc.task),
    log:
        "results/logs/plot_reliability_group/{task}/{group}.log",
    benchmark:
        "results/benchmarks/plot_reliability_group/{task}/{group}.tsv"
    resources:
        mem_mb=2000,
    script:
        "scripts/plot_reliability.py"


rule plot_summary:
    input:
        code=code("plots"),
        summary="results/metrics/summary.parquet",
    output:
        png=report("results/figures/summary.png", caption="../report/summary.rst",
                   category=OVERVIEW, labels={"figure": "accuracy and ECE of every run (heatmap)"}),
        pdf="results/figures/summary.pdf",
    params:
        methods=primary_methods(),
        runs=len({(m, r) for _, m, r in RUNS}),
    log:
        "results/logs/plot_summary.log",
    benchmark:
        "results/benchmarks/plot_summary.tsv"
    resources:
        mem_mb=2000,
    script:
        "scripts/plot_summary.py"


rule plot_summary_table:
    input:
        code=code("plots"),
        summary="results/metrics/summary.parquet",
    output:
        report("results/metrics/summary.html", caption="../report/summary_table.rst", category=OVERVIEW,
               labels={"figure": "summary.csv (table)"}),
    log:
        "results/logs/plot_summary_table.log",
    benchmark:
        "results/benchmarks/plot_summary_table.tsv"
    resources:
        mem_mb=2000,
    script:
        "scripts/plot_summary_table.py"


rule plot_scale:
    input:
        code=code("plots"),
        summary="results/metrics/summary.parquet",
        comparisons="results/metrics/comparisons.csv",
    output:
        png=report("results/figures/scale.png", caption="../report/scale.rst", category=PRETRAINING,
                   labels={"figure": "accuracy and ECE against size", "task": "all tasks"}),
        pdf="results/figures/scale.pdf",
    params:
        suites=lambda wc: config["figures"]["suites"],
        methods=primary_methods(),
    log:
        "results/logs/plot_scale.log",
    benchmark:
        "results/benchmarks/plot_scale.tsv"
    resources:
        mem_mb=2000,
    script:
        "scripts/plot_scale.py"


rule plot_dynamics:
    input:
        code=code("plots"),
        summary="results/metrics/summary.parquet",
        comparisons="results/metrics/comparisons.csv",
    output:
        png=report("results/figures/dynamics.png", caption="../report/dynamics.rst", category=PRETRAINING,
                   labels={"figure": "accuracy and ECE along training", "task": "all tasks"}),
        pdf="results/figures/dynamics.pdf",
    params:
        models=lambda wc: config["figures"]["dynamics"],
        methods=primary_methods(),
    log:
        "results/logs/plot_dynamics.log",
    benchmark:
        "results/benchmarks/plot_dynamics.tsv"
    resources:
        mem_mb=2000,
    script:
        "scripts/plot_dynamics.py"


rule plot_reliability_scale:
    input:
        code=code("plots"),
        summary="results/metrics/summary.parquet",
        reliability="results/metrics/reliability.parquet",
        curves="results/metrics/curves.parquet",
    output:
        png=report("results/figures/reliability_scale_{task}.png", caption="../report/reliability_scale.rst",
                   category=PRETRAINING, labels={"figure": "reliability across sizes", "task": "{task}"}),
        pdf="results/figures/reliability_scale_{task}.pdf",
    params:
        suites=lambda wc: config["figures"]["suites"],
        methods=primary_methods(),
    log:
        "results/logs/plot_reliability_scale/{task}.log",
    benchmark:
        "results/benchmarks/plot_reliability_scale/{task}.tsv"
    resources:
        mem_mb=2000,
    script:
        "scripts/plot_reliability_scale.py"


rule plot_pretrain_loss:
    input:
        code=code("plots"),
        models=[f"results/pretrain/models/{m}" for m in PRETRAINED],
    output:
        table="results/pretrain/loss.csv",
        png=report("results/figures/pretrain_loss.png", caption="../report/pretrain_loss.rst",
                   category=PRETRAINING, labels={"figure": "pretraining loss", "task": "(training data)"}),
        pdf="results/figures/pretrain_loss.pdf",
    params:
        variants={name: model.labels["data"] for name, model in PRETRAINED.items()},
    log:
        "results/logs/plot_pretrain_loss.log",
    benchmark:
        "results/benchmarks/plot_pretrain_loss.tsv"
    resources:
        mem_mb=2000,
    script:
        "scripts/plot_pretrain_loss.py"


rule plot_recalibration:
    input:
        code=code("plots"),
        summary="results/metrics/summary.parquet",
    output:
        png=report("results/figures/recalibration.png", caption="../report/recalibration.rst",
                   category=ANALYSIS, labels={"figure": "recalibration"}),
        pdf="results/figures/recalibration.pdf",
    params:
        suites=lambda wc: config["figures"].get("suites", []),
        dynamics=lambda wc: config["figures"].get("dynamics", []),
        alignment=alignment_models() if ALIGN else {},
        methods=primary_methods(),
    log:
        "results/logs/plot_recalibration.log",
    benchmark:
        "results/benchmarks/plot_recalibration.tsv"
    resources:
        mem_mb=2000,
    script:
        "scripts/plot_recalibration.py"


rule plot_risk_coverage:
    input:
        code=code("plots"),
        summary="results/metrics/summary.parquet",
        curves="results/metrics/curves.parquet",
    output:
        png=report("results/figures/risk_coverage_{task}.png", caption="../report/risk_coverage.rst",
                   category=PER_TASK, subcategory="{task}", labels={"figure": "risk-coverage", "models": "all"}),
        pdf="results/figures/risk_coverage_{task}.pdf",
    params:
        suites=lambda wc: config["figures"].get("suites", []),
        dynamics=lambda wc: config["figures"].get("dynamics", []),
        alignment=alignment_models() if ALIGN else {},
        methods=primary_methods(),
    log:
        "results/logs/plot_risk_coverage/{task}.log",
    benchmark:
        "results/benchmarks/plot_risk_coverage/{task}.tsv"
    resources:
        mem_mb=2000,
    script:
        "scripts/plot_risk_coverage.py"


rule plot_metric_agreement:
    input:
        code=code("plots"),
        comparisons="results/metrics/comparisons.csv",
    output:
        png=report("results/figures/metric_agreement.png", caption="../report/metric_agreement.rst",
                   category=ANALYSIS, labels={"figure": "agreement of the calibration metrics"}),
        pdf="results/figures/metric_agreement.pdf",
    log:
        "results/logs/plot_metric_agreement.log",
    benchmark:
        "results/benchmarks/plot_metric_agreement.tsv"
    resources:
        mem_mb=2000,
    script:
        "scripts/plot_metric_agreement.py"
