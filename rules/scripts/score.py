from workflow_scripts.runlog import run_logged
from workflow_scripts.scoring import score

wc, out, p = snakemake.wildcards, snakemake.output, snakemake.params


def every_task():
    for task, *paths in zip(p.run["tasks"], snakemake.input.recalibrated, out.summary, out.bins, out.sweep,
                            out.subjects, out.curves, strict=True):
        score(*paths, task=task, model=wc.model, revision=wc.revision, labels=p.run["labels"], step=p.run["step"],
              epoch=p.run["epoch"], **p.metrics)


run_logged(snakemake.log[0], every_task)
