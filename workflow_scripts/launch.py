"""Start a training function in one process or in several (``torchrun``, one node), as its
``parallel`` setting says.

``run(function, *args, parallel={"processes": N, "strategy": ...}, threads=T, **kwargs)`` calls
``function`` here when N is 1. Otherwise it writes the call to a JSON file and starts
``python -m torch.distributed.run --standalone --nproc-per-node N -m workflow_scripts.launch <file>``:
every process makes the same call, with T // N CPU threads; the Trainer (through accelerate) sees
the distributed environment and shards the work as the strategy says (``align.parallel_arguments``).
The processes' output goes to this process's stdout and stderr (a rule's log, under
``runlog.run_logged``); a failed process fails the call with the launcher's exit status.
"""
from __future__ import annotations

import ctypes
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .faults import JOB_GROUP

log = logging.getLogger(__name__)


def run(function, *args, parallel: dict, threads: int, **kwargs) -> None:
    """``function(*args, parallel=parallel, threads=..., **kwargs)`` in ``parallel["processes"]`` processes."""
    processes = parallel["processes"]
    if processes == 1:
        return function(*args, parallel=parallel, threads=threads, **kwargs)
    call = {"function": f"{function.__module__}:{function.__name__}", "args": [str(a) for a in args],
            "kwargs": {**kwargs, "parallel": parallel, "threads": max(1, threads // processes)}}
    fd, path = tempfile.mkstemp(prefix="training-call-", suffix=".json")
    with os.fdopen(fd, "w") as file:
        json.dump(call, file, default=str)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", __name__, path]
    env = {JOB_GROUP: str(os.getpgrp()), **os.environ, "OMP_NUM_THREADS": str(call["kwargs"]["threads"])}
    log.info("%s in %d processes (%s): %s", function.__name__, processes, parallel["strategy"], " ".join(command))
    sys.stdout.flush(), sys.stderr.flush()
    try:
        done = subprocess.run(command, env=env, stdout=sys.stdout, stderr=sys.stderr, stdin=subprocess.DEVNULL)
    finally:
        os.unlink(path)
    if done.returncode:
        raise RuntimeError(f"{function.__name__} in {processes} processes failed (torchrun exit status "
                           f"{done.returncode}); the processes' errors are above")


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent (torchrun's agent) dies, so that a killed job
    leaves no training process behind (torchrun starts each in a session of its own)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def main(path: str) -> None:
    """One process of a call written by ``run``."""
    _die_with_parent()
    call = json.loads(Path(path).read_text())
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, force=True,
                        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s")
    logging.captureWarnings(True)
    module, _, name = call["function"].partition(":")
    getattr(importlib.import_module(module), name)(*call["args"], **call["kwargs"])


if __name__ == "__main__":
    main(sys.argv[1])
