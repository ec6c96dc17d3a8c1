from workflow_scripts.confidence import extract_confidence
from workflow_scripts.runlog import run_logged


def every_task(tasks, raws, datas, outs):
    for run, raw, data, out in zip(tasks.values(), raws, datas, outs, strict=True):
        extract_confidence(run["kind"], raw, data, out, methods=run["methods"], match=run["match"],
                           self_eval=run["self_eval"])


run_logged(snakemake.log[0], every_task, snakemake.params.tasks, snakemake.input.raw, snakemake.input.data,
           snakemake.output)
