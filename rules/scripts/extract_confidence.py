from workflow_scripts.confidence import extract_confidence
from workflow_scripts.runlog import run_logged

run_logged(snakemake.log[0], extract_confidence, snakemake.params.kind, snakemake.input.raw,
           snakemake.input.data, snakemake.output[0], methods=snakemake.params.methods,
           match=snakemake.params.match)
