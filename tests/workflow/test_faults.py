"""Fault injection on the whole workflow: runs killed with SIGKILL (Snakemake and its jobs at once,
as a power loss would) mid-download, mid-inference and mid-write resume to the tables of an
uninterrupted run; the default config killed mid-pretraining and mid-tuning stops on its lock, and
`--unlock`, then `--rerun-incomplete`, finish it with the weights of an uninterrupted run; two clean
runs write byte-equal tables; every table traces back to its model commit, data hash, config and code;
a later failure does not keep a temporary checkpoint.

The model is served by a Hugging Face Hub on localhost (tests/fake_hub.py), so the download is
a real one through huggingface_hub; the kills inside jobs come from workflow_scripts.faults."""
from __future__ import annotations

import hashlib
import os
import pydoc_data.topics
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from fake_hub import FakeHub
from safetensors.torch import load_file
from workflow_run import ROOT, SNAKEMAKE, copy_workflow, planned_jobs, write_config

from workflow_scripts.tables import read_provenance

TARGET = "results/metrics/summary.csv"  # every table; the figures are tested elsewhere


def _config() -> dict:
    return {
        "models": {"tiny": {"source": "hf:org/tiny", "revisions": ["main"], "family": "tiny"}},
        "tasks": {
            "prose": {"kind": "clm", "dataset": {"format": "text", "path": "data/prose.txt"}, "limit": 12,
                      "window": 32},
            # 260 questions: two shards of inference (SHARD_ITEMS = 256)
            "geo": {"kind": "multiple_choice", "dataset": {"format": "geonames", "relations": ["capital", "continent"]},
                    "shots": 2, "limit": 130},
        },
        "metrics": {"n_bootstrap": 50},
        "inference": {"batch_size": 8, "threads": 1},
    }


@pytest.fixture(scope="module")
def no_slurm_probe(tmp_path_factory) -> str:
    """A PATH whose ``scontrol`` fails at once. Snakemake's Slurm plugin runs ``scontrol show config``
    whenever Snakemake starts; where Slurm is installed but not running (this project's machine after
    test_slurm) that waits ~9 s per Snakemake call. These runs use the local executor."""
    folder = tmp_path_factory.mktemp("bin")
    (folder / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    (folder / "scontrol").chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="module")
def hub(tiny_model_dir, no_slurm_probe):
    with FakeHub() as server:
        server.commit = server.add("org/tiny", {"main": tiny_model_dir})["main"]
        server.path = no_slurm_probe
        yield server


def _workdir(root: Path) -> tuple[Path, Path]:
    """A copy of the workflow with the test config and its local dataset file (real prose)."""
    workdir = copy_workflow(root)
    (workdir / "data").mkdir()
    topics = pydoc_data.topics.topics
    (workdir / "data" / "prose.txt").write_text("\n\n".join(topics[k] for k in sorted(topics)[:6]))
    return workdir, write_config(workdir, _config())


def _start(workdir: Path, config: Path, hub: FakeHub, *args: str, fault: str | None = None) -> subprocess.Popen:
    """Snakemake in a session of its own (so a fault kills it and its jobs, and nothing else)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CALIBRATION_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(workdir / "hf-cache"), HF_HUB_DISABLE_TELEMETRY="1",
               PATH=hub.path)
    if fault:
        env["CALIBRATION_FAULT"] = fault
    cmd = SNAKEMAKE + ["--directory", str(workdir), "--snakefile", str(workdir / "Snakefile"),
                       "--configfile", str(config), "--cores", "2", *args]
    return subprocess.Popen(cmd, env=env, start_new_session=True, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, _ = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def _run(workdir: Path, config: Path, hub: FakeHub, *args: str, fault: str | None = None,
         kill_on_download: bool = False) -> subprocess.CompletedProcess:
    proc = _start(workdir, config, hub, *args, fault=fault)
    if kill_on_download:
        hub.on_partial("model.safetensors", lambda: os.killpg(proc.pid, signal.SIGKILL))
    return _finish(proc)


def _complete(workdir, config, hub, *args) -> None:
    proc = _run(workdir, config, hub, TARGET, *args)
    assert proc.returncode == 0, proc.stdout[-6000:]


def _tables(workdir: Path) -> dict[str, bytes]:
    """Every finished table under results/ (not shards, not temporary files), by relative path."""
    results = workdir / "results"
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(results.rglob("*.parquet"))
            if not p.name.startswith(".") and ".shards" not in str(p)} | \
        {str(p.relative_to(workdir)): p.read_bytes() for p in results.rglob("*.csv") if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, hub):
    workdir, config = _workdir(tmp_path_factory.mktemp("reference"))
    _complete(workdir, config, hub)
    return workdir, config


def test_two_clean_runs_write_byte_equal_tables(reference, hub, tmp_path):
    workdir, config = _workdir(tmp_path / "again")
    _complete(workdir, config, hub)
    first, second = _tables(reference[0]), _tables(workdir)
    # per task: data, inference, confidence, recalibrated, metrics, bins, sweep, subjects, curves; the summaries
    # (summary.parquet and .csv, reliability, bin_sweep, subjects, curves)
    assert len(first) == 2 * 9 + 6
    assert first.keys() == second.keys()
    assert [path for path in first if first[path] != second[path]] == []


def _no_partial_output(workdir: Path, reference: dict[str, bytes]) -> None:
    """Whatever finished table a killed run left is the very table of the uninterrupted run."""
    for path, content in _tables(workdir).items():
        assert content == reference[path], f"{path} differs from the uninterrupted run's"


def _unlock(workdir, config, hub) -> None:
    proc = _run(workdir, config, hub, "--unlock")
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_runs_killed_mid_download_mid_inference_and_mid_write_resume_to_equal_tables(reference, hub, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setenv("PATH", hub.path)  # for planned_jobs
    expected = _tables(reference[0])
    workdir, config = _workdir(tmp_path / "killed")
    results = workdir / "results"
    geo = results / "inference" / "geo" / "tiny" / "main.parquet"
    shards = Path(f"{geo}.shards")

    # 1. SIGKILL while the weights are half downloaded.
    proc = _run(workdir, config, hub, TARGET, kill_on_download=True)
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:]
    assert not (results / "checkpoints" / "tiny" / "main").exists()
    _no_partial_output(workdir, expected)

    # 2. Resumed (after a kill Snakemake wants --unlock, then --rerun-incomplete), then SIGKILL after
    #    geo's first inference shard. (This run and the next take no lock, to spare the test an --unlock.)
    _unlock(workdir, config, hub)
    proc = _run(workdir, config, hub, TARGET, "--rerun-incomplete", "--nolock", fault="infer@*/inference/geo/*")
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:]
    assert not geo.exists() and [p.name for p in shards.iterdir()] == ["shard-00000.parquet"]
    _no_partial_output(workdir, expected)

    # 3. Resumed after that shard, then SIGKILL with the summary table complete under its temporary name.
    summary = results / "metrics" / "summary.parquet"
    proc = _run(workdir, config, hub, TARGET, "--rerun-incomplete", "--nolock", fault="write@*/metrics/summary.parquet")
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:]
    log = (results / "logs" / "infer" / "tiny" / "main.log").read_text()
    assert "resuming after 1 finished shard(s)" in log and "questions 260/260" in log
    assert geo.is_file() and [p.name.split("-")[0] for p in shards.iterdir()] == ["finished"]  # the shards gave way
    assert not summary.exists() and len(list(summary.parent.glob(".summary.parquet.*"))) == 1
    _no_partial_output(workdir, expected)

    # 4. Resumed to the end: the tables of the uninterrupted run, and no leftovers.
    _complete(workdir, config, hub, "--rerun-incomplete")
    got = _tables(workdir)
    assert got.keys() == expected.keys()
    assert [path for path in expected if got[path] != expected[path]] == []
    assert [p for p in results.rglob("*") if p.name.startswith(".") or p.name.startswith("shard-")] == []
    assert not (results / "checkpoints" / "tiny" / "main").exists()  # temporary: gone after its last consumer
    assert planned_jobs(workdir, config, "--", TARGET) == {}


# The default config (config/config.yaml) up to one tuned model's first epoch: the corpus, the tokenizer and
# the pretraining of the align base, the task tables, the instruction set, the tuning, then inference.
BASE = "geo-neox-l-standard"
SIZE = "l"  # the align base's size
TUNED = f"{BASE}-sft-narrow-full"
FIRST_EPOCH = f"results/inference/geography/{TUNED}/epoch1.parquet"


def _published_weights(workdir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The weights of every published revision of the align base and of the tuned model, by folder."""
    results = workdir / "results"
    folders = [*(results / "pretrain" / "models" / BASE).glob("step*"),
               *(results / "align" / "models" / TUNED).glob("epoch*")]
    return {str(f.relative_to(results)): load_file(f / "model.safetensors") for f in sorted(folders)}


def _default_config(workdir: Path) -> Path:
    """The default config in ``workdir``, its align base (size l) of the shape of size xs: the same jobs, steps,
    checkpoints, data and tuning, minutes less of training on a CPU."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert config["align"]["base"] == BASE and BASE == f"{config['pretrain']['family']}-{SIZE}-standard"
    assert 192 in config["pretrain"]["checkpoints"] and config["pretrain"]["steps"] > 192  # the kill's step
    config["pretrain"]["sizes"][SIZE] = dict(config["pretrain"]["sizes"]["xs"])
    return write_config(workdir, config, "default.yaml")


def _stops_on_the_lock_until_unlocked(workdir: Path, config: Path, hub: FakeHub) -> None:
    """After a kill the next run stops on the lock the kill left, with Snakemake's message; --unlock removes it."""
    proc = _run(workdir, config, hub, FIRST_EPOCH)
    assert proc.returncode == 1 and "Directory cannot be locked" in proc.stdout, proc.stdout[-3000:]
    _unlock(workdir, config, hub)


def test_the_default_run_killed_in_training_is_finished_by_unlock_then_rerun_incomplete(hub, tmp_path, request):
    """The README's two commands after a kill, on the real default config (its align base of a smaller shape,
    _default_config): killed (SIGKILL of Snakemake and its jobs) after pretraining's checkpoint at step 192,
    then after tuning's first epoch. Each time the next run stops on the lock, `--unlock` removes it and
    `--rerun-incomplete` resumes the training where it stopped; the published weights are those of an
    uninterrupted run (beside it, at the same time)."""
    reference, killed = (copy_workflow(tmp_path / name) for name in ("reference", "killed"))
    config = _default_config(killed)
    uninterrupted = _start(reference, _default_config(reference), hub, f"results/align/models/{TUNED}")
    request.addfinalizer(lambda: uninterrupted.poll() is None and os.killpg(uninterrupted.pid, signal.SIGKILL))
    logs, models = killed / "results" / "logs", killed / "results" / "align" / "models"

    proc = _run(killed, config, hub, FIRST_EPOCH, fault="train@*/pretrain/work/*/step192")
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:]
    assert not (killed / "results" / "pretrain" / "models" / BASE).exists()
    _stops_on_the_lock_until_unlocked(killed, config, hub)

    proc = _run(killed, config, hub, FIRST_EPOCH, "--rerun-incomplete", fault="train@*/align/work/*/checkpoint-*")
    assert proc.returncode == -signal.SIGKILL, proc.stdout[-3000:]
    assert "resuming from step 192" in (logs / "pretrain" / f"{BASE}.log").read_text()
    assert not (models / TUNED).exists()
    _stops_on_the_lock_until_unlocked(killed, config, hub)

    proc = _run(killed, config, hub, FIRST_EPOCH, "--rerun-incomplete")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "resuming from results/align/work/" in (logs / "tune" / f"{TUNED}.log").read_text()
    assert (killed / FIRST_EPOCH).is_file()
    proc = _finish(uninterrupted)
    assert proc.returncode == 0, proc.stdout[-3000:]
    got, expected = _published_weights(killed), _published_weights(reference)
    settings = yaml.safe_load(config.read_text())
    assert list(got) == list(expected)  # the base's checkpoints, the tuned model's epochs
    assert len(expected) == len(settings["pretrain"]["checkpoints"]) + settings["align"]["epochs"]
    assert load_file(killed / "results" / "pretrain" / "models" / BASE / "step192" / "model.safetensors")[
        "gpt_neox.embed_in.weight"].shape[1] == settings["pretrain"]["sizes"][SIZE]["hidden_size"]
    for folder, weights in expected.items():
        for name, tensor in weights.items():
            if folder.startswith("pretrain") or folder.endswith("epoch1"):  # saved before the kill, or resumed exactly
                assert torch.equal(got[folder][name], tensor), (folder, name)
            else:  # resumed by the Trainer, as test_align.py's resumed tuning
                torch.testing.assert_close(got[folder][name], tensor, atol=1e-6, rtol=1e-5)


def test_every_table_traces_back_to_model_data_config_and_code(reference, hub):
    workdir, _ = reference
    summary = pd.read_csv(workdir / TARGET)
    inputs = read_provenance(workdir / "results" / "metrics" / "summary.parquet")["inputs"]
    prose = hashlib.sha256((workdir / "data" / "prose.txt").read_bytes()).hexdigest()
    for row in summary.itertuples():
        score = inputs[f"results/metrics/{row.task}/{row.model}/{row.revision}.parquet"]
        assert score["n_bins"] == 10 and score["n_bootstrap"] == 50 and score["seed"] == 0
        recalibrated = score["input"]
        assert recalibrated["stage"] == "recalibrate" and recalibrated["folds"] == 5
        confidence = recalibrated["input"]
        assert row.method in confidence["methods"]
        infer = confidence["inference"]
        assert infer["checkpoint"] == {"source": "hf:org/tiny", "revision": "main", "resolved_commit": hub.commit,
                                       "trust_remote_code": False}
        assert infer["settings"]["batch_size"] == 8
        data = infer["data"]
        assert data["dataset"] == _config()["tasks"][row.task]["dataset"] and data["seed"] == 0
        assert data["files"] and all(len(digest) == 64 for digest in data["files"].values())
        if row.task == "prose":
            assert data["files"] == {"data/prose.txt": prose}
        for stage, module in [(score, "metrics"), (recalibrated, "recalibrate"), (confidence, "confidence"),
                              (infer, "inference"), (data, "tasks")]:
            assert (module in stage["code"]["modules"]
                    and stage["packages"]["torch" if module == "inference" else "pandas"])


def test_a_changed_dataset_file_reruns_its_dependants(reference, hub, monkeypatch):
    monkeypatch.setenv("PATH", hub.path)
    workdir, config = reference
    path = workdir / "data" / "prose.txt"
    original = path.read_text()
    path.write_text(original.replace("the", "a", 1))
    try:
        jobs = planned_jobs(workdir, config, "--", TARGET)
    finally:
        path.write_text(original)
    # The prose task from its data on. One job infers every task of a checkpoint, so the other
    # task's inference runs again too, and one job each takes both tasks' confidence, recalibration and
    # scores (the other task's equal to before).
    assert jobs == {"prepare_task": 1, "fetch_checkpoint": 1, "infer": 1, "extract_confidence": 1, "recalibrate": 1,
                    "score": 1, "summarize": 1}


def test_a_later_failure_does_not_keep_the_temporary_checkpoint(tmp_path, hub):
    workdir, _ = _workdir(tmp_path / "failing")
    config = _config()
    config["tasks"] = {"geo": {**config["tasks"]["geo"], "limit": 4}}
    with open(workdir / "workflow_scripts" / "confidence.py", "a") as code:  # the confidence stage fails
        code.write("\n\ndef extract_confidence(*args, **kwargs):\n    raise ValueError('injected failure')\n")
    proc = _run(workdir, write_config(workdir, config), hub, TARGET)
    assert proc.returncode == 1
    assert "injected failure" in proc.stdout
    results = workdir / "results"
    assert (results / "inference" / "geo" / "tiny" / "main.parquet").is_file()  # its only consumer is done
    assert not (results / "checkpoints" / "tiny" / "main").exists()
    assert not (results / "confidence" / "geo" / "tiny" / "main.parquet").exists()



def test_a_second_run_in_the_same_folder_is_refused_by_snakemakes_lock(tiny_model_dir, tmp_path):
    """Two runs started in one folder: while the first runs, the second stops before any job and the first finishes
    as if alone. Snakemake refuses the second with its lock's message (three lines, not one: the error, the folder,
    what to do after a kill), or, where a job of the first is under way, first with IncompleteFilesException, whose
    advice (--rerun-incomplete) then meets the lock."""
    import time

    from workflow_run import snakemake, start_snakemake, tiny_config

    workdir = copy_workflow(tmp_path / "wf")
    config = write_config(workdir, tiny_config(tiny_model_dir))
    finish, stop = start_snakemake(workdir, config, "--cores", "1", TARGET)
    try:
        deadline = time.monotonic() + 300
        while not any((workdir / ".snakemake" / "locks").glob("*")):
            assert time.monotonic() < deadline, "the first run took no lock in 5 minutes"
            time.sleep(0.5)
        plain = snakemake(workdir, config, "--cores", "1", TARGET, check=False)
        assert plain.returncode == 1 and ("Error: Directory cannot be locked." in plain.stdout
                                          or "IncompleteFilesException" in plain.stdout), plain.stdout[-3000:]
        second = snakemake(workdir, config, "--cores", "1", TARGET, "--rerun-incomplete", check=False)
        assert second.returncode == 1 and "Error: Directory cannot be locked." in second.stdout, second.stdout[-3000:]
        assert second.stdout[second.stdout.index("Error: Directory cannot be locked."):].splitlines()[:3] == [
            "Error: Directory cannot be locked. Please make sure that no other Snakemake process is trying to create "
            "the same files in the following directory:",
            str(workdir),
            "If you are sure that no other instances of snakemake are running on this directory, the remaining lock "
            "was likely caused by a kill signal or a power loss. It can be removed with the --unlock argument."]
        assert "Select jobs to execute" not in plain.stdout + second.stdout
        first = finish()
    finally:
        stop()
    assert (workdir / TARGET).is_file() and "Nothing to be done" not in first.stdout
