"""The workflow tier: tests that run Snakemake on a scratch copy of the workflow (marker `workflow`; the longest
also `slow`), and the finished tiny run that several of them share."""
from __future__ import annotations

from pathlib import Path

import pytest

# Tests of minutes each: a whole study, a cluster, training jobs, kills and restarts.
SLOW = {"test_default_run.py", "test_slurm.py", "test_align_workflow.py", "test_suite_workflow.py", "test_faults.py"}


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.workflow)
            if Path(item.fspath).name in SLOW:
                item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir) -> Path:
    """The workflow folder of one complete run of workflow.tiny_config (config file test.yaml), shared by
    test_workflow and test_report: read it only; a test that changes a run works on a copy (workflow.copy_run)."""
    from workflow_run import copy_workflow, snakemake, tiny_config, write_config

    workdir = copy_workflow(tmp_path_factory.mktemp("tiny-run") / "wf")
    snakemake(workdir, write_config(workdir, tiny_config(tiny_model_dir)), "--cores", "2")
    return workdir
