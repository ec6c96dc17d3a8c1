from workflow_scripts.pretrain import train_model
from workflow_scripts.runlog import run_logged

p = snakemake.params
run_logged(snakemake.log[0], train_model, snakemake.input.corpus, snakemake.input.tokenizer, snakemake.output[0],
           p.work_dir, size=p.size, seed=p.seed, threads=snakemake.threads, **p.training)
