from workflow_scripts.plots import plot_reliability
from workflow_scripts.runlog import run_logged

i, p, w = snakemake.input, snakemake.params, snakemake.wildcards
run_logged(snakemake.log[0], plot_reliability, i.summary, i.reliability, i.curves, w.task, snakemake.output.png,
           snakemake.output.pdf, runs=p.runs, methods=p.methods, group=w.group)
