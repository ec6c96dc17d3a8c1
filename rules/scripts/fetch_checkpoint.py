from workflow_scripts.runlog import run_logged
from workflow_scripts.sources import fetch_checkpoint

p, wc = snakemake.params, snakemake.wildcards
run_logged(snakemake.log[0], fetch_checkpoint, p.source, wc.revision, snakemake.output[0],
           evict_hub_cache=p.evict_hub_cache, trust_remote_code=p.trust_remote_code, model=wc.model)
