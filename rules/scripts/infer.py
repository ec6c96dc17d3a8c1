from workflow_scripts.inference import infer_checkpoint
from workflow_scripts.runlog import run_logged

p, wc = snakemake.params, snakemake.wildcards
tasks = [{"kind": run["kind"], "data": data, "out": out, "settings": run["settings"],
          "provenance": {"task": task, "model": wc.model, "revision": wc.revision, "source": p.source,
                         "settings": run["settings"]}}
         for (task, run), data, out in zip(p.tasks.items(), snakemake.input.data, snakemake.output)]
run_logged(snakemake.log[0], infer_checkpoint, snakemake.input.checkpoint, tasks, threads=snakemake.threads)
