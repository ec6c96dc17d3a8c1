from workflow_scripts.plots import plot_reliability
from workflow_scripts.runlog import run_logged

i = snakemake.input
run_logged(snakemake.log[0], plot_reliability, i.summary, i.reliability, i.curves, snakemake.wildcards.task,
           snakemake.output.png, snakemake.output.pdf)
