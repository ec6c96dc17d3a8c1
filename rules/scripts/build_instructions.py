from workflow_scripts.align_data import build_instructions
from workflow_scripts.runlog import run_logged

p = snakemake.params
run_logged(snakemake.log[0], build_instructions, snakemake.wildcards.instructions, p.dataset, snakemake.output[0],
           exclude=snakemake.input.held_out, limit=p.limit, seed=p.seed)
