from workflow_scripts.runlog import run_logged
from workflow_scripts.summary import summarize

inp, out = snakemake.input, snakemake.output
run_logged(snakemake.log[0], summarize, inp.summaries, inp.bins, inp.sweeps, inp.subjects, inp.curves, out.summary,
           out.csv, out.reliability, out.sweep, out.subjects, out.curves)
