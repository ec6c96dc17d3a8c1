"""Fault injection for the tests: kill a run with SIGKILL at a named point, as a power loss would.

``CALIBRATION_FAULT=<point>`` (or ``<point>@<pattern>``: only where the path of the file at hand
matches the glob ``<pattern>``, e.g. ``write@*/inference/geo/*/main.parquet``) makes the process
group of the job (Snakemake and all its jobs, when Snakemake was started in a session of its own)
die at that point. The points:

- ``fetch``: a checkpoint folder half built (its first file linked or copied, the rest not);
- ``infer``: an inference job after it wrote its first shard of results;
- ``train``: a training job after it saved a checkpoint to resume from (pretraining: ``<work>/step<N>``;
  tuning, RLHF, DPO: the Trainer's ``<work>/checkpoint-<step>``);
- ``write``: a file complete in its temporary name, before the rename that publishes it.

A training process that ``launch`` started in a session of its own kills its job's process group
too (``JOB_GROUP``), as a power loss would kill them all.

Unset (the normal case) it does nothing. tests/test_faults.py kills runs this way and checks that
they resume to the tables of an uninterrupted run.
"""
from __future__ import annotations

import os
import signal
from fnmatch import fnmatchcase

VARIABLE = "CALIBRATION_FAULT"
JOB_GROUP = "CALIBRATION_JOB_GROUP"  # set by launch.run for the processes it starts


def fault_point(point: str, where: str | os.PathLike = "") -> None:
    """SIGKILL the process group here if ``CALIBRATION_FAULT`` names ``point`` (and a pattern ``where`` matches)."""
    wanted = os.environ.get(VARIABLE)
    if not wanted:
        return
    name, _, pattern = wanted.partition("@")
    if name == point and fnmatchcase(str(where), pattern or "*"):
        job = int(os.environ.get(JOB_GROUP, os.getpgrp()))
        if job != os.getpgrp():
            os.killpg(job, signal.SIGKILL)
        os.killpg(os.getpgrp(), signal.SIGKILL)
