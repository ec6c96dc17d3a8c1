"""The figures and tables of the study, by family (style: what they share; reliability, overview,
pretraining, alignment, analysis), and the registry that declares each one (registry.py, which the workflow
reads while it parses: this package imports no matplotlib of its own)."""
