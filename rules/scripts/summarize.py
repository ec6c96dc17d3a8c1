from workflow_scripts.metrics import summarize
from workflow_scripts.runlog import run_logged

out = snakemake.output
run_logged(snakemake.log[0], summarize, snakemake.input.summaries, snakemake.input.bins, out.summary, out.csv,
           out.reliability)
