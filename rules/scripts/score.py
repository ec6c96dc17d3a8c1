from workflow_scripts.metrics import score
from workflow_scripts.runlog import run_logged

wc = snakemake.wildcards
run_logged(snakemake.log[0], score, snakemake.input.confidence, snakemake.output.summary, snakemake.output.bins,
           task=wc.task, model=wc.model, revision=wc.revision, labels=snakemake.params.labels,
           **snakemake.params.metrics)
