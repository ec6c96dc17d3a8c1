from workflow_scripts.align import last_epoch, rlhf
from workflow_scripts.runlog import run_logged

p = snakemake.params
run_logged(snakemake.log[0], rlhf, last_epoch(snakemake.input.policy), snakemake.input.reward_model,
           snakemake.input.pairs, snakemake.output[0], p.work_dir, seed=p.seed, threads=snakemake.threads, **p.settings)
