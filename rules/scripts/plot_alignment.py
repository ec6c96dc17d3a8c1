from workflow_scripts.plots import plot_alignment
from workflow_scripts.runlog import run_logged

p = snakemake.params
# comparisons: the significance stars, where the rule has that input (rules/align.smk)
run_logged(snakemake.log[0], plot_alignment, snakemake.input.summary, p.models, p.methods, snakemake.output.png,
           snakemake.output.pdf, comparisons_path=snakemake.input.get("comparisons"))
