# The rule of a figure or table of workflow_scripts/plots/registry.py: its function called with the rule's inputs,
# params, wildcards and outputs as keyword arguments (the params that only the caption reads left out).
from workflow_scripts.plots.registry import FIGURES_BY_RULE
from workflow_scripts.runlog import run_logged

figure = FIGURES_BY_RULE[snakemake.rule]
arguments = {name: getattr(snakemake.input, name) for name in figure.inputs}
arguments |= {name: getattr(snakemake.params, name) for name in figure.params}
arguments |= {name: getattr(snakemake.wildcards, name) for name in figure.wildcards}
arguments |= {name: getattr(snakemake.output, name) for name in figure.outputs}
run_logged(snakemake.log[0], figure.draw(), **arguments)
