from workflow_scripts.plots import plot_reliability
from workflow_scripts.runlog import run_logged

run_logged(snakemake.log[0], plot_reliability, snakemake.input.summary, snakemake.input.reliability,
           snakemake.wildcards.task, snakemake.output.png, snakemake.output.pdf)
