from workflow_scripts.plots import plot_metric_agreement
from workflow_scripts.runlog import run_logged

run_logged(snakemake.log[0], plot_metric_agreement, snakemake.input.comparisons, snakemake.output.png,
           snakemake.output.pdf)
