# Calibration of language models across their life: see README.md and config/config.yaml.
from snakemake.utils import min_version, validate

min_version("9.0")


# The embedded default, unless a config is given (--configfile): configs merge, so load only one.
if not config:

    configfile: "config/config.yaml"


validate(config, schema="config/schema.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/pretrain.smk"
if config.get("align"):

    include: "rules/align.smk"

include: "rules/inference.smk"
include: "rules/scoring.smk"
include: "rules/figures.smk"


# Seconds of pandas each: on a cluster they run where snakemake runs, not as cluster jobs.
localrules: all, extract_confidence, score, summarize, plot_reliability, plot_summary, plot_scale, plot_dynamics,
    plot_reliability_scale, plot_pretrain_loss


rule all:
    input:
        "results/metrics/summary.csv",
        expand("results/figures/reliability_{task}.png", task=TASKS),
        "results/figures/summary.png",
        study_figures(),
    default_target: True
