from pathlib import Path

from workflow_scripts.align import rlhf
from workflow_scripts.launch import run
from workflow_scripts.runlog import run_logged

p = snakemake.params
run_logged(snakemake.log[0], run, rlhf, Path(snakemake.input.policy) / p.policy_revision, snakemake.input.reward_model,
           snakemake.input.pairs, snakemake.output[0], p.work_dir, seed=p.seed, parallel=p.parallel,
           threads=snakemake.threads, **p.settings)
