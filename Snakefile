# Calibration of language models across their life: see README.md and config/config.yaml.
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

from workflow_scripts.study import schema_error

min_version("9.0")


# The embedded default, unless a config is given (--configfile): configs merge, so load only one.
if not config:

    configfile: "config/config.yaml"


# A config error is the user's, not the workflow's: its one line, naming the key, and exit status 1 (no traceback).
if error := schema_error(config, Path(workflow.basedir) / "config" / "schema.yaml"):
    sys.exit(error)
validate(config, schema="config/schema.yaml")  # fills in the schema's defaults


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/pretrain.smk"


if STUDY.align:

    include: "rules/align.smk"


include: "rules/inference.smk"
include: "rules/imports.smk"
include: "rules/scoring.smk"
include: "rules/figures.smk"


localrules:
    all,


rule all:
    default_target: True
    input:
        "results/metrics/summary.csv",
        "results/metrics/comparisons.csv",
        figure_targets(STUDY),
