"""Helpers to run the workflow with Snakemake in a scratch copy of the repository."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow (Snakefile, rules, config, code, captions) so tests may touch its files."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "Snakefile", dest)
    for folder in ("rules", "config", "workflow_scripts", "report"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def copy_run(finished: Path, dest: Path) -> Path:
    """A copy of a finished run's folder (its workflow, results and Snakemake's records, file dates kept), for a
    test to change while the run it copies stays as it was (conftest's ``tiny_run`` is shared by many tests).

    Snakemake records the inputs of each job by path, and the stage modules (rules' ``code`` inputs) by their
    absolute path: in the copy's records those name the copy's own files (of the same content), as a run made
    in ``dest`` would have recorded them; otherwise every job would look changed (its set of inputs)."""
    shutil.copytree(finished, dest, symlinks=True)
    moves = {f'"{folder}{os.sep}': f'"{target}{os.sep}'
             for folder, target in ((finished, dest), (finished.resolve(), dest.resolve()))}
    for record in (dest / ".snakemake" / "metadata").iterdir():
        text = record.read_text()
        for folder, target in moves.items():
            text = text.replace(folder, target)
        record.write_text(text)
    return dest


def tiny_config(model_dir) -> dict:
    """The tiny config of the workflow tests: one tiny model on a task of each kind, from real data."""
    return {
        "models": {"tiny": {"source": f"local:{model_dir}", "revisions": ["main"], "family": "tiny", "stage": "base"}},
        "tasks": {
            "prose": {"kind": "clm", "dataset": {"format": "pydoc_topics"}, "limit": 3, "window": 32},
            "facts": {"kind": "generation", "dataset": {"format": "geonames", "relations": ["capital", "continent"]},
                      "limit": 4, "max_new_tokens": 4, "methods": ["first_token_prob", "seq_prob"]},
            "geo": {"kind": "multiple_choice", "dataset": {"format": "geonames", "relations": ["capital"]},
                    "shots": 2, "limit": 6},
        },
        "metrics": {"n_bootstrap": 50},
        "inference": {"batch_size": 4, "threads": 1},
    }


def write_config(workdir: Path, config: dict, name: str = "test.yaml") -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _no_slurm_probe_path() -> str:
    """PATH with an ``scontrol`` that fails at once first. Snakemake's Slurm plugin runs
    ``scontrol show config`` whenever Snakemake starts; where Slurm is installed but not running
    (this machine after test_slurm) that waits ~9 s per call. Runs without a profile are local."""
    folder = Path(tempfile.mkdtemp(prefix="no-slurm-"))
    (folder / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    (folder / "scontrol").chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


_LOCAL_PATH = _no_slurm_probe_path()


def _command(workdir: Path, config: Path, args) -> tuple[list[str], dict]:
    cmd = SNAKEMAKE + ["--directory", str(workdir), "--snakefile", str(workdir / "Snakefile"),
                       "--configfile", str(config), *args]
    env = os.environ if "--profile" in args else {**os.environ, "PATH": _LOCAL_PATH}
    return cmd, env


def _checked(proc: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
    proc.stdout = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


def snakemake(workdir: Path, config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run snakemake in ``workdir`` on ``config``; return the completed process (output in .stdout).
    Runs with a ``--profile`` see the real PATH (the Slurm profile needs the real ``scontrol``)."""
    cmd, env = _command(workdir, config, args)
    return _checked(subprocess.run(cmd, capture_output=True, text=True, env=env), check)


def start_snakemake(workdir: Path, config: Path, *args: str, check: bool = True):
    """``snakemake`` started in the background (its output to files, so that it never waits on a pipe); returns
    a function that waits for it and then returns, or raises, as ``snakemake`` does, and ``stop``, which kills
    it if it still runs."""
    cmd, env = _command(workdir, config, args)
    out, err = (tempfile.TemporaryFile("w+") for _ in range(2))
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, start_new_session=True)

    def finish() -> subprocess.CompletedProcess:
        proc.wait()
        texts = []
        for file in (out, err):
            file.seek(0)
            texts.append(file.read())
        return _checked(subprocess.CompletedProcess(cmd, proc.returncode, *texts), check)

    def stop() -> None:
        if proc.poll() is None:  # snakemake and its jobs (a session of their own)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.close()
        err.close()

    return finish, stop


def planned_jobs(workdir: Path, config: Path, *args: str) -> dict[str, int]:
    """Rule -> number of jobs that a dry run plans ({} when there is nothing to do)."""
    out = snakemake(workdir, config, "--dry-run", "--quiet", "rules", *args).stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", table, flags=re.M))
    jobs.pop("total", None)
    return {rule: int(n) for rule, n in jobs.items()}
