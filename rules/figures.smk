# Stage 4: figures for the paper and for Snakemake's report (snakemake --report report.html).


rule plot_reliability:
    input:
        code=code("plots"),
        summary="results/metrics/summary.parquet",
        reliability="results/metrics/reliability.parquet",
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
