from pathlib import Path

from workflow_scripts.align import rlhf
from workflow_scripts.runlog import run_logged

p = snakemake.params
run_logged(snakemake.log[0], rlhf, Path(snakemake.input.policy) / p.policy_revision, snakemake.input.reward_model,
           snakemake.input.pairs, snakemake.output[0], p.work_dir, seed=p.seed, threads=snakemake.threads, **p.settings)
