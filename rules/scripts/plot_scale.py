from workflow_scripts.plots import plot_scale
from workflow_scripts.runlog import run_logged

p = snakemake.params
run_logged(snakemake.log[0], plot_scale, snakemake.input.summary, p.suites, p.methods, snakemake.output.png,
           snakemake.output.pdf, comparisons_path=snakemake.input.comparisons)
