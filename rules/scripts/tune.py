from workflow_scripts.align import tune
from workflow_scripts.runlog import run_logged

p = snakemake.params
run_logged(snakemake.log[0], tune, snakemake.input.base, snakemake.input.data, snakemake.output[0], p.work_dir,
           tuning=p.tuning, lora=p.lora, lr=p.lr, seed=p.seed, threads=snakemake.threads, **p.training)
