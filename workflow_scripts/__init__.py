"""Stage functions of the calibration workflow: one module per stage, no Snakemake inside."""
