from workflow_scripts.plots import plot_dynamics
from workflow_scripts.runlog import run_logged

p = snakemake.params
run_logged(snakemake.log[0], plot_dynamics, snakemake.input.summary, p.models, p.methods, snakemake.output.png,
           snakemake.output.pdf, comparisons_path=snakemake.input.comparisons)
