# Stage 4: figures for the paper and for Snakemake's report (snakemake --report report.html).


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
        reliability="results/metrics/reliability.parquet",
        curves="results/metrics/curves.parquet",
    output:
        png=report("results/figures/reliability_{task}.png", caption="../report/reliability.rst",
                   category="Reliability diagrams", labels={"task": "{task}"}),
        pdf="results/figures/reliability_{task}.pdf",
    log:
        "results/logs/plot_reliability/{task}.log",
    benchmark:
        "results/benchmarks/plot_reliability/{task}.tsv"
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
                   category="Summary", labels={"figure": "accuracy and ECE"}),
        pdf="results/figures/summary.pdf",
    log:
        "results/logs/plot_summary.log",
    benchmark:
        "results/benchmarks/plot_summary.tsv"
    resources:
        mem_mb=2000,
    script:
        "scripts/plot_summary.py"


rule plot_scale:
    input:
        code=code("plots"),
        summary="results/metrics/summary.parquet",
        comparisons="results/metrics/comparisons.csv",
    output:
        png=report("results/figures/scale.png", caption="../report/scale.rst", category="Scale and training"),
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
        png=report("results/figures/dynamics.png", caption="../report/dynamics.rst", category="Scale and training"),
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
                   category="Scale and training", labels={"task": "{task}"}),
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
                   category="Scale and training"),
        pdf="results/figures/pretrain_loss.pdf",
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
                   category="Recalibration"),
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
                   category="Selective prediction", labels={"task": "{task}"}),
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
                   category="Paired comparisons"),
        pdf="results/figures/metric_agreement.pdf",
    log:
        "results/logs/plot_metric_agreement.log",
    benchmark:
        "results/benchmarks/plot_metric_agreement.tsv"
    resources:
        mem_mb=2000,
    script:
        "scripts/plot_metric_agreement.py"
