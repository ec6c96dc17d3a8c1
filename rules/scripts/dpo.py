from pathlib import Path

from workflow_scripts.align import dpo
from workflow_scripts.launch import run
from workflow_scripts.runlog import run_logged

p = snakemake.params
run_logged(snakemake.log[0], run, dpo, Path(snakemake.input.policy) / p.policy_revision, snakemake.input.pairs,
           snakemake.output[0], p.work_dir, max_length=p.max_length, seed=p.seed, parallel=p.parallel,
           threads=snakemake.threads, **p.settings)
