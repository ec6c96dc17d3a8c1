from workflow_scripts.diversity import diversity
from workflow_scripts.runlog import run_logged

p = snakemake.params
run_logged(snakemake.log[0], diversity, dict(zip(p.names, snakemake.input.data)), p.settings["model"],
           snakemake.output.map, snakemake.output.csv, sample=p.settings["sample"], seed=p.seed,
           threads=snakemake.threads)
