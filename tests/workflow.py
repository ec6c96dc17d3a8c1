"""Helpers to run the workflow with Snakemake in a scratch copy of the repository."""
from __future__ import annotations

import os
import re
import shutil
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


def snakemake(workdir: Path, config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run snakemake in ``workdir`` on ``config``; return the completed process (output in .stdout).
    Runs with a ``--profile`` see the real PATH (the Slurm profile needs the real ``scontrol``)."""
    cmd = SNAKEMAKE + ["--directory", str(workdir), "--snakefile", str(workdir / "Snakefile"),
                       "--configfile", str(config), *args]
    env = os.environ if "--profile" in args else {**os.environ, "PATH": _LOCAL_PATH}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    proc.stdout = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


def planned_jobs(workdir: Path, config: Path, *args: str) -> dict[str, int]:
    """Rule -> number of jobs that a dry run plans ({} when there is nothing to do)."""
    out = snakemake(workdir, config, "--dry-run", "--quiet", "rules", *args).stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", table, flags=re.M))
    jobs.pop("total", None)
    return {rule: int(n) for rule, n in jobs.items()}
