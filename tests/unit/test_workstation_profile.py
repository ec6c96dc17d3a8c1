"""profiles/workstation sizes itself from the GPUs it finds (pretend ones here: CUDA_VISIBLE_DEVICES, or an
nvidia-smi on PATH that lists them), as gpu-job.py finds them: Snakemake gives a job that asks for more GPUs than
the profile's `resources: gpu` only that many, so a fixed `gpu: 1` planned the paper's 8-process training on one."""
from __future__ import annotations

import importlib.util
import os
import re

import pytest
from snakemake.profiles import ProfileConfigFileParser
from workflow_run import ROOT, copy_workflow, snakemake, tiny_config, write_config

PROFILE = ROOT / "profiles" / "workstation"


def load_gpu_job():
    spec = importlib.util.spec_from_file_location("gpu_job", PROFILE / "gpu-job.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def profile_resources() -> dict[str, int]:
    """The profile's `resources`, read by Snakemake's own profile parser as `snakemake --profile` reads them."""
    with open(PROFILE / "config.yaml") as f:
        settings = ProfileConfigFileParser().parse(f)
    return {name: int(value) for name, value in (item.split("=") for item in settings["resources"])}


def pretend_nvidia_smi(folder, gpus: int) -> str:
    """A PATH whose nvidia-smi lists `gpus` GPUs as `nvidia-smi --query-gpu=index --format=csv,noheader` does."""
    folder.mkdir()
    (folder / "nvidia-smi").write_text("#!/bin/sh\n" + "".join(f"echo {k}\n" for k in range(gpus)))
    (folder / "nvidia-smi").chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


@pytest.mark.parametrize("visible, gpus", [("0,1,2", 3), ("4", 1), ("GPU-5a1b,GPU-77c0", 2)])
def test_the_profile_lends_the_gpus_of_cuda_visible_devices(monkeypatch, visible, gpus):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert profile_resources()["gpu"] == gpus == len(load_gpu_job().machine_gpus())


def test_the_profile_lends_every_gpu_nvidia_smi_lists(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", pretend_nvidia_smi(tmp_path / "bin", 8))
    assert profile_resources()["gpu"] == 8 == len(load_gpu_job().machine_gpus())
    assert profile_resources()["cpus"] == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("visible", ["", None])
def test_without_gpus_a_gpu_job_stops_with_a_line_saying_so(monkeypatch, tmp_path, visible):
    """No GPU found: the profile lends 1, so a GPU job is not turned into a CPU job (gpu: 0) by Snakemake but
    reaches gpu-job.py, which stops it."""
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert profile_resources()["gpu"] == 1
    gpu_job = load_gpu_job()
    monkeypatch.setattr(gpu_job, "LOCKS", tmp_path / "locks")
    with pytest.raises(SystemExit, match=r"the job needs 1 GPUs, this machine lends 0 \(\[\]\)"):
        gpu_job.lock_gpus(1)


def eight_process_training(tiny_model_dir) -> dict:
    """The tiny config with one task and the paper's full tuning: 8 processes of one GPU each."""
    config = tiny_config(tiny_model_dir)
    config["tasks"] = {"facts": config["tasks"]["facts"]}
    config["align"] = {"base": "tiny", "instructions": {"narrow": {"format": "geonames"}},
                       "tuning": {"full": {"lr": 1e-3}}, "epochs": 1, "limit": 16,
                       "parallel": {"processes": 8}, "resources": {"gpu": 1}}
    return config


def test_the_paper_s_eight_process_training_plans_eight_gpus(monkeypatch, tmp_path, tiny_model_dir):
    """A dry run through the profile on a machine of 8 (pretend) GPUs plans the 8-process tuning job with gpu=8,
    as docs/study.md says (the fixed `gpu: 1` of the profile planned gpu=1)."""
    workdir = copy_workflow(tmp_path / "workflow")
    config = eight_process_training(tiny_model_dir)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(8))))
    run = snakemake(workdir, write_config(workdir, config), "--profile", str(PROFILE), "--dry-run",
                    "results/align/models/tiny-sft-narrow-full")
    tune = re.search(r"rule tune:.*?resources: ([^\n]*)", run.stdout, flags=re.S)
    assert tune and "gpu=8" in tune[1].split(", "), run.stdout[-3000:]


def test_a_job_asking_for_more_gpus_than_the_machine_lends_stops_the_run(monkeypatch, tmp_path, tiny_model_dir):
    """On 4 (pretend) GPUs the 8-process tuning job would be cut down to 4 by Snakemake without a word: the run
    stops before any job with a line naming the training run, what it asks and what the machine lends."""
    workdir = copy_workflow(tmp_path / "workflow")
    config = eight_process_training(tiny_model_dir)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    run = snakemake(workdir, write_config(workdir, config), "--profile", str(PROFILE), "--dry-run", check=False)
    assert run.returncode != 0 and "Job stats" not in run.stdout
    assert ("config: align.tuning.full: its training job asks for 8 GPUs (resources.gpu x parallel.processes), "
            "the machine lends 4 (resources: gpu)") in run.stderr.splitlines()
    config["models"]["tiny"]["resources"] = {"gpu": 5}
    config["align"]["parallel"]["processes"] = 1
    run = snakemake(workdir, write_config(workdir, config), "--profile", str(PROFILE), "--dry-run", check=False)
    assert "config: models.tiny.resources.gpu: its jobs ask for 5 GPUs, the machine lends 4 (resources: gpu)" \
        in run.stderr.splitlines()
