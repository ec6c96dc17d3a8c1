from workflow_scripts.plots import plot_diversity
from workflow_scripts.runlog import run_logged

run_logged(snakemake.log[0], plot_diversity, snakemake.input.map, snakemake.input.summary, snakemake.output.png,
           snakemake.output.pdf)
