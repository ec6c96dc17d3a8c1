from pathlib import Path

from workflow_scripts.align import train_reward_model
from workflow_scripts.launch import run
from workflow_scripts.runlog import run_logged

p = snakemake.params
run_logged(snakemake.log[0], run, train_reward_model, Path(snakemake.input.policy) / p.policy_revision,
           snakemake.input.pairs, snakemake.output[0], max_length=p.max_length, seed=p.seed, parallel=p.parallel,
           threads=snakemake.threads, **p.settings)
