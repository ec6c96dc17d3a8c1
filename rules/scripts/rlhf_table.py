from workflow_scripts.plots import write_rlhf_table
from workflow_scripts.runlog import run_logged

p = snakemake.params
run_logged(snakemake.log[0], write_rlhf_table, snakemake.input.summary, p.models, p.methods, snakemake.output[0])
