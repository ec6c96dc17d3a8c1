from workflow_scripts.pretrain import build_corpus
from workflow_scripts.runlog import run_logged

run_logged(snakemake.log[0], build_corpus, snakemake.output[0], data=snakemake.wildcards.data,
           seed=snakemake.params.seed, exclude=snakemake.input.held_out, **snakemake.params.corpus)
