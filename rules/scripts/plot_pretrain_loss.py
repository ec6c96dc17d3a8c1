from workflow_scripts.plots import plot_pretrain_loss
from workflow_scripts.runlog import run_logged

run_logged(snakemake.log[0], plot_pretrain_loss, snakemake.input.models, snakemake.params.variants,
           snakemake.output.table, snakemake.output.png, snakemake.output.pdf)
