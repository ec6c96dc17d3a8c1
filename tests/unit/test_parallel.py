"""Training in several processes (workflow_scripts/launch.py, align.parallel): two processes on this CPU
machine (gloo), each strategy that the installed torch runs on CPUs, against one process with the same
global batch; a killed two-process run that leaves no process behind and resumes; the preference stages."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model
from safetensors.torch import load_file
from test_align import ONE, _held_out_accuracy

from workflow_scripts import align, align_data, launch
from workflow_scripts.faults import VARIABLE
from workflow_scripts.tables import read_table

# 48 examples (none longer than max_length), a global batch of 8: 6 full steps per epoch (an uneven last batch
# would differ: accelerate fills it up with the first examples again in each process), 2 epochs.
TUNE = dict(tuning="full", lora={}, epochs=2, gradient_accumulation_steps=1, lr=1e-3, max_length=160, seed=0)
GLOBAL_BATCH = 8
# float32 sums of the same numbers in another order (gradients all-reduced over two processes):
# the weights after 12 AdamW steps agree to about 1e-6; a step of the learning rate is 1e-3.
TOLERANCE = dict(atol=2e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("parallel-base"), arch="gpt_neox")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel-data")
    align_data.build_instructions("narrow", {"format": "geonames", "style": "narrow"}, root / "narrow.parquet",
                                  exclude=[], limit=48, seed=0)
    align_data.build_preferences("pairs", {"format": "geonames"}, root / "pairs.parquet", exclude=[], limit=32, seed=0)
    return root


def tune(base, data, out: Path, processes: int, strategy: str = "ddp"):
    launch.run(align.tune, base, data / "narrow.parquet", out, out.with_name(out.name + "-work"),
               parallel={"processes": processes, "strategy": strategy}, threads=2,
               batch_size=GLOBAL_BATCH // processes, **TUNE)
    return load_file(out / "epoch2" / "model.safetensors")


def assert_same_weights(a: dict, b: dict, **tolerance) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key, **(tolerance or TOLERANCE))


@pytest.fixture(scope="module")
def one_process(base, data, tmp_path_factory):
    return tune(base, data, tmp_path_factory.mktemp("one") / "full", processes=1)


@pytest.fixture(scope="module")
def two_processes(base, data, tmp_path_factory):
    return tune(base, data, tmp_path_factory.mktemp("two") / "full", processes=2)


def test_two_ddp_processes_give_the_weights_of_one_with_the_same_global_batch(one_process, two_processes, base):
    assert_same_weights(one_process, two_processes)
    start = load_file(base / "model.safetensors")
    moved = max((one_process[k] - start[k]).abs().max().item() for k in start)
    assert moved > 100 * TOLERANCE["atol"]  # the agreement is not that of two untrained copies


def test_two_fsdp_processes_give_the_weights_of_one(one_process, base, data, tmp_path):
    assert_same_weights(one_process, tune(base, data, tmp_path / "full", processes=2, strategy="fsdp"))
    # one process wrote whole weights, loadable as the revision epoch<N> that inference reads
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["epoch1", "epoch2", "log.parquet"]


def launched_processes(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (the test's temporary folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_a_killed_two_process_run_leaves_no_process_and_resumes(two_processes, base, data, tmp_path, capfd):
    out, work = tmp_path / "full", tmp_path / "full-work"
    first_epoch = f"checkpoint-{48 // GLOBAL_BATCH}"
    script = ("import sys; from pathlib import Path; sys.path[:0] = [sys.argv[1], str(Path(sys.argv[1]).parent)]; "
              "from test_parallel import tune; tune(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), 2)")
    # The job in a session of its own, as Snakemake runs it; killed (SIGKILL, its whole process group
    # and the training processes') once the first epoch's checkpoint is saved.
    job = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), str(base), str(data), str(out)],
                         env={**os.environ, VARIABLE: f"train@*/{first_epoch}", "TMPDIR": str(tmp_path)},
                         start_new_session=True, capture_output=True, text=True, timeout=600)
    assert job.returncode == -signal.SIGKILL, job.stderr[-3000:]
    deadline = time.monotonic() + 30
    while launched_processes(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert launched_processes(str(tmp_path)) == []
    assert not out.exists()
    assert (work / first_epoch).is_dir()

    capfd.readouterr()
    assert_same_weights(two_processes, tune(base, data, out, processes=2), atol=1e-6, rtol=1e-5)
    assert f"resuming from {work / first_epoch}" in capfd.readouterr().err
    last_epoch = f"checkpoint-{2 * 48 // GLOBAL_BATCH}"
    assert {p.name for p in work.glob("checkpoint-*")} == {first_epoch, last_epoch}

    # A job killed while the second process still wrote its part of the last checkpoint: that checkpoint
    # is not resumed from, but removed, and the epoch before it is.
    shutil.rmtree(out)
    (work / last_epoch / "rng_state_1.pth").unlink()
    assert_same_weights(two_processes, tune(base, data, out, processes=2), atol=1e-6, rtol=1e-5)
    err = capfd.readouterr().err
    assert f"{work / last_epoch} was not written whole" in err and f"resuming from {work / first_epoch}" in err


def test_reward_model_rlhf_and_dpo_in_two_processes(two_processes, base, data, tmp_path):
    """Each preference stage runs in two processes and publishes what one process would: the reward model
    with its held-out accuracy, and DPO within rounding of one process with the same global batch."""
    policy = tmp_path / "policy"
    align.tune(base, data / "narrow.parquet", policy, tmp_path / "policy-work", parallel=ONE, threads=2,
               batch_size=GLOBAL_BATCH, **{**TUNE, "epochs": 1})
    policy = policy / "epoch1"
    two = {"processes": 2, "strategy": "ddp"}
    reward = dict(epochs=1, lr=1e-3, max_length=256, seed=0, threads=2)
    launch.run(align.train_reward_model, policy, data / "pairs.parquet", tmp_path / "reward", parallel=two,
               batch_size=4, **reward)
    evaluation = read_table(tmp_path / "reward" / "eval.parquet")
    assert evaluation["accuracy"].item() == _held_out_accuracy(tmp_path / "reward", data / "pairs.parquet", 3)

    dpo = dict(epochs=1, lr=1e-4, beta=0.1, max_length=256, seed=0, threads=2)
    for processes in (1, 2):
        launch.run(align.dpo, policy, data / "pairs.parquet", tmp_path / f"dpo{processes}",
                   tmp_path / f"dpo{processes}-work", parallel={"processes": processes, "strategy": "ddp"},
                   batch_size=8 // processes, **dpo)
    assert_same_weights(*(load_file(tmp_path / f"dpo{p}" / "epoch1" / "model.safetensors") for p in (1, 2)))

    launch.run(align.rlhf, policy, tmp_path / "reward", data / "pairs.parquet", tmp_path / "rlhf",
               tmp_path / "rlhf-work", parallel=two, epochs=1, batch_size=4, num_generations=4, max_completion_length=8,
               prompts=8, lr=1e-4, beta=0.05, seed=0, threads=2)
    start, after = (load_file(p / "model.safetensors") for p in (policy, tmp_path / "rlhf" / "epoch1"))
    assert any(not torch.equal(start[k], after[k]) for k in start)
