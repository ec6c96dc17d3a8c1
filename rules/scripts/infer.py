from workflow_scripts.inference import run_inference
from workflow_scripts.runlog import run_logged

p, wc = snakemake.params, snakemake.wildcards
run_logged(snakemake.log[0], run_inference, p.kind, snakemake.input.data, snakemake.input.checkpoint,
           snakemake.output[0], threads=snakemake.threads, **p.settings,
           provenance={"task": wc.task, "model": wc.model, "revision": wc.revision, "source": p.source,
                       "settings": p.settings})
