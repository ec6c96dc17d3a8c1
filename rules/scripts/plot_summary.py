from workflow_scripts.plots import plot_summary
from workflow_scripts.runlog import run_logged

run_logged(snakemake.log[0], plot_summary, snakemake.input.summary, snakemake.output.png, snakemake.output.pdf,
           methods=snakemake.params.methods)
