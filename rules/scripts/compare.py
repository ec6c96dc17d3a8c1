from workflow_scripts.compare import compare
from workflow_scripts.runlog import run_logged

runs = [{**run, "path": path} for run, path in zip(snakemake.params.runs, snakemake.input.runs, strict=True)]
metrics = snakemake.params.metrics
run_logged(snakemake.log[0], compare, runs, snakemake.params.pairs, snakemake.output[0],
           **{key: metrics[key] for key in ("n_bins", "n_bootstrap", "seed") if key in metrics})
