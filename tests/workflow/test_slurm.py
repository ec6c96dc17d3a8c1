"""Cluster execution: profiles/slurm against a real single-node Slurm started here, and the GPU
pinning of profiles/workstation.

tools/local-slurm.sh installs Debian's slurm-wlm and munge (apt) and starts slurmctld and slurmd
on this machine, which needs root. In CI (CI=true) the Slurm test must run; elsewhere it skips,
saying why, where it cannot start that Slurm.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from workflow_run import ROOT, copy_workflow, snakemake, start_snakemake, tiny_config, write_config

START_SLURM = ROOT / "tools" / "local-slurm.sh"
SLURM_CONF = Path("/etc/slurm/slurm.conf")


def tiny(model_dir, **resources) -> dict:
    """The tiny config of the workflow tests, less its prose task (fewer jobs: a faster test), on
    the CPU wherever it runs (so that runs compare exactly)."""
    config = tiny_config(model_dir)
    config["tasks"].pop("prose", None)
    config["models"]["tiny"]["resources"] = resources
    config["inference"]["device"] = "cpu"
    return config


def cluster_jobs(config) -> Counter:
    """The jobs of a run that leave snakemake: one per task table, then per checkpoint its fetch, its inference and
    its scoring group (confidence, recalibration, metrics: one job), and the comparisons; the summary and the
    figures are localrules."""
    return Counter({"prepare_task": len(config["tasks"]), "fetch_checkpoint": 1, "infer": 1, "scoring": 1,
                    "compare": 1})


def submitted_jobs(stdout: str) -> dict[str, str]:
    """Slurm job id -> what it runs, from Snakemake's log lines: the rule, or for a group job (its log folder
    `group_<group>_<rules>`) the group's name."""
    found = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/(rule|group)_(\w+)/", stdout)
    return {job: name.split("_")[0] if kind == "group" else name for job, kind, name in found}


def read_tables(workdir: Path, tasks) -> dict[str, pd.DataFrame]:
    results = workdir / "results"
    tables = {"summary": pd.read_csv(results / "metrics" / "summary.csv"),
              "reliability": pd.read_parquet(results / "metrics" / "reliability.parquet")}
    for task in tasks:
        tables[task] = pd.read_parquet(results / "confidence" / task / "tiny" / "main.parquet")
    return tables


def assert_same_tables(tables: dict, expected: dict) -> None:
    for name, table in expected.items():
        pd.testing.assert_frame_equal(tables[name], table, obj=name)


def cannot_start_slurm() -> str | None:
    if SLURM_CONF.exists() and "local-slurm.sh: a single-node test cluster" not in SLURM_CONF.read_text():
        return f"{SLURM_CONF} configures another Slurm: this test uses only the one tools/local-slurm.sh starts"
    if os.geteuid() != 0:
        return "starting a local Slurm (tools/local-slurm.sh) needs root"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "Slurm is not installed and there is no apt-get to install Debian's slurm-wlm"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (requirements.txt)"
    return None


@pytest.fixture(scope="module")
def local_slurm():
    """A running single-node Slurm; yields its job-completion log. Stops it unless it ran before."""
    reason = cannot_start_slurm()
    if reason and os.environ.get("CI"):
        pytest.fail(f"CI must test against a real Slurm, but: {reason}")
    if reason:
        pytest.skip(reason)
    was_running = bool(shutil.which("sinfo")) and subprocess.run(["sinfo"], capture_output=True).returncode == 0
    subprocess.run(["bash", str(START_SLURM), "start"], check=True)
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    yield Path(re.search(r"^JobCompLoc\s*=\s*(\S+)", config, re.M)[1])
    if not was_running:
        subprocess.run(["bash", str(START_SLURM), "stop"], check=False)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, tiny_model_dir):
    """The reference: the tiny config run by plain local snakemake. It runs in the background, beside the
    start of the local Slurm and the first profile's run (which mostly wait); call the fixture's value for
    its tables."""
    workdir = copy_workflow(tmp_path_factory.mktemp("local"))
    config = tiny(tiny_model_dir)
    finish, stop = start_snakemake(workdir, write_config(workdir, config), "--cores", "2")
    tables = {}

    def result() -> dict[str, pd.DataFrame]:
        if not tables:
            finish()
            tables.update(read_tables(workdir, config["tasks"]))
        return tables

    yield result
    stop()


def finished_slurm_jobs(jobcomp: Path, run_id: str) -> dict[str, dict]:
    """Slurm job id -> its record in Slurm's job-completion log, for the jobs of one Snakemake run."""
    records = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in jobcomp.read_text().splitlines()]
    return {r["JobId"]: r for r in records if r.get("Name") == run_id}


def test_slurm_profile_runs_the_cluster_jobs_in_slurm(local_run, local_slurm, tmp_path, tiny_model_dir):
    workdir = copy_workflow(tmp_path / "workflow")
    config = tiny(tiny_model_dir, mem_mb=1000, runtime=10)
    run = snakemake(workdir, write_config(workdir, config), "--profile", str(ROOT / "profiles" / "slurm"),
                    # This Slurm has no accounting database: job states come from squeue (README),
                    # which is asked soon and often since these jobs take seconds.
                    "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2")

    # Snakemake submitted the cluster jobs with sbatch ...
    run_id = re.search(r"SLURM run ID: (\S+)", run.stdout)
    assert run_id, f"snakemake did not use the Slurm executor:\n{run.stdout[-3000:]}"
    submitted = submitted_jobs(run.stdout)
    assert Counter(submitted.values()) == cluster_jobs(config)
    # ... and Slurm ran every one of them to completion, in this workflow, with the model's resources.
    ran = finished_slurm_jobs(local_slurm, run_id[1])
    assert set(ran) == set(submitted)
    for job_id, rule in submitted.items():
        assert ran[job_id]["JobState"] == "COMPLETED", ran[job_id]
        assert ran[job_id]["WorkDir"] == str(workdir)
        if rule == "infer":
            assert ran[job_id]["TimeLimit"] == "10" and "mem=1000M" in ran[job_id]["Tres"], ran[job_id]

    assert_same_tables(read_tables(workdir, config["tasks"]), local_run())


def load_gpu_job():
    spec = importlib.util.spec_from_file_location("gpu_job", ROOT / "profiles" / "workstation" / "gpu-job.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_job_hands_out_each_gpu_to_one_job_at_a_time(monkeypatch, tmp_path):
    gpu_job = load_gpu_job()
    monkeypatch.setattr(gpu_job, "LOCKS", tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6")
    first, first_fds = gpu_job.lock_gpus(2)
    second, second_fds = gpu_job.lock_gpus(1)
    assert first == ["3", "5"] and second == ["6"]
    with pytest.raises(SystemExit, match="no 1 free GPUs"):
        gpu_job.lock_gpus(1, timeout=0)
    for fd in first_fds:  # the first job ends: its GPUs are free again
        os.close(fd)
    assert gpu_job.lock_gpus(2, timeout=0)[0] == ["3", "5"]
    assert gpu_job.lock_gpus(0) == ([], [])
    with pytest.raises(SystemExit, match="needs 4 GPUs"):
        gpu_job.lock_gpus(4)


def test_workstation_profile_pins_each_job_to_its_gpus(local_run, monkeypatch, tmp_path, tiny_model_dir):
    workdir = copy_workflow(tmp_path / "workflow")
    config = tiny(tiny_model_dir, gpu=1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # two GPUs lent to Snakemake (pretend ones here)
    run = snakemake(workdir, write_config(workdir, config), "--profile", str(ROOT / "profiles" / "workstation"),
                    "--resources", "gpu=2", "cpus=2")

    started = re.findall(r"gpu-job.py: (\w+) job \S* on GPU\(s\) \[([\d,]*)\]", run.stdout)
    assert Counter("scoring" if rule == "group" else rule for rule, _ in started) == cluster_jobs(config)
    for rule, gpus in started:
        assert gpus in ({"0", "1"} if rule == "infer" else {""}), (rule, gpus)
    assert_same_tables(read_tables(workdir, config["tasks"]), local_run())


def two_process_tuning(model_dir, gpu: int) -> tuple[dict, str]:
    """A config whose one training job, full tuning of the tiny model, runs in two processes (one GPU each
    where ``gpu`` is 1), and that job's output."""
    config = tiny(model_dir)
    config["tasks"] = {"facts": config["tasks"]["facts"]}  # the evaluated facts the instructions leave out
    config["align"] = {"base": "tiny", "instructions": {"narrow": {"format": "geonames", "style": "narrow"}},
                       "tuning": {"full": {"lr": 1e-3}}, "epochs": 1, "batch_size": 4, "max_length": 128, "limit": 16,
                       "threads": 2, "parallel": {"processes": 2},
                       "resources": {"mem_mb": 1500, "gpu": gpu, "runtime": 10}}
    return config, "results/align/models/tiny-sft-narrow-full"


def assert_trained_in_two_processes(workdir: Path, output: str) -> None:
    log = (workdir / "results" / "logs" / "tune" / "tiny-sft-narrow-full.log").read_text()
    assert "tune in 2 processes (ddp)" in log and "[rank 0]" in log and "[rank 1]" in log
    assert (workdir / output / "epoch1" / "model.safetensors").is_file()


def test_slurm_runs_a_training_job_of_two_processes(local_slurm, tmp_path, tiny_model_dir):
    workdir = copy_workflow(tmp_path / "workflow")
    config, output = two_process_tuning(tiny_model_dir, gpu=0)
    run = snakemake(workdir, write_config(workdir, config), "--profile", str(ROOT / "profiles" / "slurm"), output,
                    "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2")
    run_id = re.search(r"SLURM run ID: (\S+)", run.stdout)[1]
    submitted = submitted_jobs(run.stdout)
    tune, = [job_id for job_id, rule in submitted.items() if rule == "tune"]
    record = finished_slurm_jobs(local_slurm, run_id)[tune]
    # one Slurm job, one task of both CPUs (align.threads), the training resources
    assert record["JobState"] == "COMPLETED" and record["TimeLimit"] == "10", record
    assert "cpu=2" in record["Tres"] and "mem=1500M" in record["Tres"], record
    assert_trained_in_two_processes(workdir, output)


def test_workstation_profile_pins_a_gpu_to_each_training_process(monkeypatch, tmp_path, tiny_model_dir):
    workdir = copy_workflow(tmp_path / "workflow")
    config, output = two_process_tuning(tiny_model_dir, gpu=1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")  # pretend GPUs: the processes train on the CPU
    run = snakemake(workdir, write_config(workdir, config), "--profile", str(ROOT / "profiles" / "workstation"), output,
                    "--resources", "gpu=3", "cpus=2")
    started = dict(re.findall(r"gpu-job.py: (\w+) job \d+ on GPU\(s\) \[([\d,]*)\]", run.stdout))
    assert started["tune"] == "0,1" and started["fetch_align_base"] == ""
    assert_trained_in_two_processes(workdir, output)
