"""The README's "Your model, your data" config, as a user would copy it, with the real data sets of
../shared/fixtures in its `data/` folder: the workflow loads it and plans every stage for it."""
from __future__ import annotations

import re

import yaml
from conftest import fixtures_dir
from workflow_run import ROOT, copy_workflow, planned_jobs


def readme_example() -> str:
    section = (ROOT / "README.md").read_text().split("## Your model, your data", 1)[1]
    return re.search(r"```yaml\n(.*?)```", section, flags=re.S).group(1)


def test_the_readme_example_plans_every_stage_on_the_real_data(tmp_path):
    fixtures = fixtures_dir()
    workdir = copy_workflow(tmp_path / "workflow")
    config = yaml.safe_load(readme_example())
    assert len(readme_example().splitlines()) <= 15 and set(config) == {"models", "tasks"}
    for task in config["tasks"].values():
        path = task["dataset"]["path"]
        (workdir / path.split("/")[0]).mkdir(exist_ok=True)
        link = workdir / "data" / path.split("/")[1]
        if not link.exists():
            link.symlink_to(fixtures / path.split("/")[1])
    (workdir / "my.yaml").write_text(readme_example())
    jobs = planned_jobs(workdir, workdir / "my.yaml")
    assert jobs["prepare_task"] == 4 and jobs["infer"] == 1 and jobs["score"] == 1
    assert {"plot_reliability", "plot_summary", "plot_recalibration"} <= set(jobs)
