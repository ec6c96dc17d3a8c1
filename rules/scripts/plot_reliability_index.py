from workflow_scripts.plots import plot_reliability_index
from workflow_scripts.runlog import run_logged

i, p = snakemake.input, snakemake.params
run_logged(snakemake.log[0], plot_reliability_index, i.summary, i.curves, snakemake.wildcards.task, p.groups,
           p.methods, snakemake.output.png, snakemake.output.pdf)
