from workflow_scripts.recalibrate import recalibrate
from workflow_scripts.runlog import run_logged

run_logged(snakemake.log[0], recalibrate, snakemake.input.confidence, snakemake.input.data, snakemake.output[0],
           **snakemake.params.recalibration)
