# Calibration of language models across their life: see README.md and config/config.yaml.
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")


# The embedded default, unless a config is given (--configfile): configs merge, so load only one.
if not config:

    configfile: "config/config.yaml"


def config_error(config, schema_path):
    """The config's first schema violation as one line naming the key, or None."""
    import jsonschema
    import yaml

    with open(schema_path) as f:
        validator = jsonschema.Draft202012Validator(yaml.safe_load(f))
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        return f"config: {'.'.join(map(str, error.absolute_path)) or '(top level)'}: {error.message}"


if error := config_error(config, Path(workflow.basedir) / "config" / "schema.yaml"):
    raise ValueError(error)
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


localrules: all


rule all:
    input:
        "results/metrics/summary.csv",
        "results/metrics/comparisons.csv",
        figure_targets(),
    default_target: True
