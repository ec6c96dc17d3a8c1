from workflow_scripts.pretrain import train_tokenizer
from workflow_scripts.runlog import run_logged

run_logged(snakemake.log[0], train_tokenizer, snakemake.input.corpus, snakemake.output[0],
           vocab_size=snakemake.params.vocab_size)
