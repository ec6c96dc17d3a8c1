#!/usr/bin/env python3
"""Start one Snakemake job on this machine, pinned to GPUs of its own (the profile's submit command).

Snakemake's scheduler keeps the `gpu` resources of the running jobs within `resources: gpu` of the
profile; this script picks *which* GPUs: it takes a lock file per GPU for as long as the job runs
(the lock goes with the job's process, so a crashed job frees its GPUs) and starts the job with
CUDA_VISIBLE_DEVICES set to them, and to nothing for jobs that ask for no GPU.

    gpu-job.py JOBSCRIPT     start the job in the background; print its process id
    gpu-job.py PID...        stop those jobs (Snakemake's cancel command, on Ctrl-C)

The GPUs are those in CUDA_VISIBLE_DEVICES when set (to lend Snakemake only some), else every GPU
that nvidia-smi lists.
"""
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOCKS = Path(tempfile.gettempdir()) / f"snakemake-gpus-{os.getuid()}"


def machine_gpus() -> list[str]:
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return out.split()


def lock_gpus(n: int, timeout: float = 300) -> tuple[list[str], list[int]]:
    """Lock n free GPUs; wait a little for a job that has just finished to let go of its GPUs."""
    if n == 0:
        return [], []
    LOCKS.mkdir(exist_ok=True)
    gpus = machine_gpus()
    if n > len(gpus):
        sys.exit(f"gpu-job.py: the job needs {n} GPUs, this machine lends {len(gpus)} ({gpus})")
    deadline = time.monotonic() + timeout
    while True:
        taken = []
        for gpu in gpus:
            fd = os.open(LOCKS / f"gpu{gpu}.lock", os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                taken.append((gpu, fd))
            except BlockingIOError:
                os.close(fd)
            if len(taken) == n:
                return [g for g, _ in taken], [fd for _, fd in taken]
        for _, fd in taken:
            os.close(fd)
        if time.monotonic() > deadline:
            sys.exit(f"gpu-job.py: no {n} free GPUs among {gpus} after {timeout:.0f} s: is `resources: gpu` "
                     "in the profile more than the GPUs this machine has?")
        time.sleep(1)


def submit(jobscript: str) -> None:
    # Snakemake writes the job's properties (rule, resources) into its job script.
    properties = json.loads(re.search(r"^# properties = (.*)$", Path(jobscript).read_text(), re.M)[1])
    gpus, fds = lock_gpus(int(properties.get("resources", {}).get("gpu") or 0))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(gpus))
    print(f"gpu-job.py: {properties.get('rule', 'group')} job {properties.get('jobid', '')} "
          f"on GPU(s) [{','.join(gpus)}]", file=sys.stderr)
    # A session of its own (cancel stops the whole job); the job's output goes where snakemake's does.
    job = subprocess.Popen(["/bin/sh", jobscript], env=env, pass_fds=fds, start_new_session=True,
                           stdin=subprocess.DEVNULL, stdout=sys.stderr)
    print(job.pid)


def cancel(pids: list[str]) -> None:
    for pid in pids:
        try:
            os.killpg(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass


if __name__ == "__main__":
    if all(arg.isdigit() for arg in sys.argv[1:]):
        cancel(sys.argv[1:])
    else:
        submit(sys.argv[-1])
