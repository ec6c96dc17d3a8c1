from workflow_scripts.metrics import score
from workflow_scripts.runlog import run_logged

wc, out = snakemake.wildcards, snakemake.output
run_logged(snakemake.log[0], score, snakemake.input.recalibrated, out.summary, out.bins, out.sweep, out.subjects,
           out.curves, task=wc.task, model=wc.model, revision=wc.revision, labels=snakemake.params.labels,
           **snakemake.params.metrics)
