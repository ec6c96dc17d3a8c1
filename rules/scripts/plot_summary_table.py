from workflow_scripts.plots import write_summary_table
from workflow_scripts.runlog import run_logged

run_logged(snakemake.log[0], write_summary_table, snakemake.input.summary, snakemake.output[0])
