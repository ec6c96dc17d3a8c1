from workflow_scripts.runlog import run_logged
from workflow_scripts.sources import fetch_checkpoint

p = snakemake.params
run_logged(snakemake.log[0], fetch_checkpoint, p.source, p.revision, snakemake.output[0])
