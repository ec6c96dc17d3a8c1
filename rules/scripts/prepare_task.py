from workflow_scripts.runlog import run_logged
from workflow_scripts.tasks import prepare_task

p = snakemake.params
run_logged(snakemake.log[0], prepare_task, snakemake.wildcards.task, p.kind, p.dataset, snakemake.output[0],
           shots=p.shots, limit=p.limit, seed=p.seed, **p.prompting)
