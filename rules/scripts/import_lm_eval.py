from workflow_scripts.imports import import_samples
from workflow_scripts.runlog import run_logged

run_logged(snakemake.log[0], import_samples, snakemake.input.samples, task=snakemake.wildcards.task,
           inference_out=snakemake.output[0])
