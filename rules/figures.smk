# Stage 4: figures for the paper and for Snakemake's report (snakemake --report report.html). One rule per entry
# of the registry (workflow_scripts/plots/registry.py) that the config asks for, each running rules/scripts/plot.py:
# seconds of pandas, so every one is a local rule (it runs where snakemake runs, not as a cluster job).
from workflow_scripts.plots.registry import FIGURES, figure_targets


report: "../report/workflow.rst"


wildcard_constraints:
    group=one_of(sorted({group for groups in STUDY.reliability_groups.values() for group in groups})),


for figure in FIGURES:
    if not figure.asked(STUDY):
        continue

    rule:
        name:
            figure.rule
        input:
            **figure.input_files(STUDY),
            code=code("plots.registry", f"plots.{figure.module}"),
        output:
            **{
                name: (
                    report(
                        path,
                        caption=f"../report/{figure.caption}.rst",
                        category=figure.category,
                        subcategory=figure.subcategory,
                        labels=figure.labels,
                    )
                    if name == figure.reported
                    else path
                )
                for name, path in figure.outputs.items()
            },
        log:
            figure.log,
        benchmark:
            figure.benchmark
        localrule: True
        resources:
            mem_mb=2000,
        params:
            **figure.param_functions(STUDY),
        script:
            "scripts/plot.py"
