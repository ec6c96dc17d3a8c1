from workflow_scripts.runlog import run_logged
from workflow_scripts.sources import fetch_checkpoint

run_logged(snakemake.log[0], fetch_checkpoint, snakemake.params.source, snakemake.wildcards.revision,
           snakemake.output[0], evict_hub_cache=snakemake.params.evict_hub_cache)
