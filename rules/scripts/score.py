from workflow_scripts.metrics import score
from workflow_scripts.runlog import run_logged

wc, out, p = snakemake.wildcards, snakemake.output, snakemake.params
run_logged(snakemake.log[0], score, snakemake.input.recalibrated, out.summary, out.bins, out.sweep, out.subjects,
           out.curves, task=wc.task, model=wc.model, revision=wc.revision, labels=p.labels, **p.revision_numbers,
           **p.metrics)
