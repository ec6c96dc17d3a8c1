from workflow_scripts.plots import plot_risk_coverage
from workflow_scripts.runlog import run_logged

i, p = snakemake.input, snakemake.params
run_logged(snakemake.log[0], plot_risk_coverage, i.summary, i.curves, snakemake.wildcards.task, p.suites,
           p.dynamics, p.alignment, p.methods, snakemake.output.png, snakemake.output.pdf)
