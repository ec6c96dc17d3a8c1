from workflow_scripts.align import tune
from workflow_scripts.launch import run
from workflow_scripts.runlog import run_logged

p = snakemake.params
run_logged(snakemake.log[0], run, tune, snakemake.input.base, snakemake.input.data, snakemake.output[0], p.work_dir,
           tuning=p.tuning, lora=p.lora, lr=p.lr, seed=p.seed, parallel=p.parallel, threads=snakemake.threads,
           **p.training)
