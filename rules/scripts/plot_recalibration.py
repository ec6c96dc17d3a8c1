from workflow_scripts.plots import plot_recalibration
from workflow_scripts.runlog import run_logged

p = snakemake.params
run_logged(snakemake.log[0], plot_recalibration, snakemake.input.summary, p.suites, p.dynamics, p.alignment,
           p.methods, snakemake.output.png, snakemake.output.pdf)
