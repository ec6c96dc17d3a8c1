"""Crash safety at the system level: a disk that fills for real in the middle of a Parquet write, an inference shard
and a checkpoint's save_pretrained (a small tmpfs mounted here, as root; skipped, with the reason, where it cannot be
mounted) ends with one clear error and leaves nothing a later run would trust; and a tuning checkpoint whose
optimizer.pt was truncated is found before it is trusted, removed, and trained again."""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import build_tiny_model, build_tokenizer, inference_settings
from safetensors.torch import load_file
from test_align import TUNE

from workflow_scripts import align, align_data, pretrain
from workflow_scripts.inference import run_inference, runner
from workflow_scripts.inference.runner import Shards
from workflow_scripts.tables import DiskFullError, atomic_dir, checkpoint_problem, write_table
from workflow_scripts.tasks import prepare_task

pytestmark = pytest.mark.slow  # training, and a file system mounted for the test


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs mounted at ``tmp_path/disk``, unmounted after the test."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command to mount a small tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True,
                          text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)


def _fill(disk: Path, leave: int = 0) -> None:
    """Take the free space of ``disk`` but ``leave`` bytes, with a file of its own (as another job would)."""
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, shutil.disk_usage(disk).free - leave))


def _disk_full(path) -> str:
    """The start of the error that a write of ``path`` on a full disk ends with."""
    return rf"^\[Errno 28\] {re.escape(str(path))}: not written, its disk is full \([\d,]+ bytes free\); nothing of "


def test_a_table_written_on_a_full_disk_leaves_no_output_and_the_old_one_intact(small_disk):
    out = small_disk / "t.parquet"
    write_table(pd.DataFrame({"x": [1.0]}), out)
    before = out.read_bytes()
    _fill(small_disk, leave=64 << 10)
    big = pd.DataFrame({"x": np.random.default_rng(0).random(200_000)})  # 1.6 MB that does not compress
    with pytest.raises(DiskFullError, match=_disk_full(out)):
        write_table(big, out)
    with pytest.raises(DiskFullError, match=_disk_full(small_disk / "new.parquet")):
        write_table(big, small_disk / "new.parquet")
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "t.parquet"]  # no temporary, no new table
    assert out.read_bytes() == before


def test_torch_save_on_a_full_disk_is_named_so(small_disk):
    """torch.save says only "unexpected pos" when the disk is full: the error says what happened, to what."""
    _fill(small_disk, leave=64 << 10)
    with pytest.raises(DiskFullError, match=_disk_full(small_disk / "state")) as error:
        with atomic_dir(small_disk / "state") as tmp:
            torch.save({"w": torch.rand(100_000)}, tmp / "state.pt")
    assert "unexpected pos" in str(error.value.__cause__)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_an_inference_shard_written_on_a_full_disk_keeps_the_shards_before_it(small_disk, tiny_model_dir, tmp_path,
                                                                              monkeypatch, caplog):
    """The disk fills up after the second shard: the third fails with the error naming it, the two before it stay
    and are resumed from once there is room again, to the table of a run that never lacked it."""
    data, settings = tmp_path / "mc.parquet", inference_settings("multiple_choice", batch_size=2)
    prepare_task("mc", "multiple_choice", {"format": "geonames", "relations": ["capital"]}, data, limit=20, shots=2)
    monkeypatch.setattr(runner, "SHARD_ITEMS", 5)
    run_inference("multiple_choice", data, tiny_model_dir, tmp_path / "reference.parquet", threads=1, **settings)

    add, out = Shards.add, small_disk / "raw.parquet"

    def filling_add(shards, *args):
        add(shards, *args)
        if len(shards) == 2:
            _fill(small_disk)

    monkeypatch.setattr(Shards, "add", filling_add)
    with pytest.raises(DiskFullError, match=_disk_full(small_disk / "raw.parquet.shards" / "shard-00002.parquet")):
        run_inference("multiple_choice", data, tiny_model_dir, out, threads=1, **settings)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "raw.parquet.shards"]
    assert sorted(p.name for p in (small_disk / "raw.parquet.shards").iterdir()) == ["shard-00000.parquet",
                                                                                    "shard-00001.parquet"]
    monkeypatch.setattr(Shards, "add", add)
    (small_disk / "filler").unlink()
    with caplog.at_level(logging.INFO, logger="workflow_scripts.inference"):
        run_inference("multiple_choice", data, tiny_model_dir, out, threads=1, **settings)
    assert "resuming after 2 finished shard(s)" in caplog.text
    assert out.read_bytes() == (tmp_path / "reference.parquet").read_bytes()


def test_a_checkpoint_saved_on_a_full_disk_leaves_no_folder_and_the_old_one_intact(small_disk, tmp_path):
    """pretrain's save_checkpoint (save_pretrained, the tokenizer, torch.save) on a disk that fills up while the
    weights are written: over a checkpoint saved before, and as a new one."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tokenizer = build_tokenizer(tmp_path / "tokenizer")
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    ids = torch.tensor([tokenizer("The capital of France is Paris.")["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    save = [model, tokenizer, optimizer, schedule, [{"step": 1, "loss": 1.0}]]

    pretrain.save_checkpoint(*save, small_disk / "step1")
    before = {p.name: p.read_bytes() for p in (small_disk / "step1").iterdir()}
    _fill(small_disk, leave=(small_disk / "step1" / "model.safetensors").stat().st_size // 2)
    for folder in (small_disk / "step1", small_disk / "step2"):
        with pytest.raises(DiskFullError, match=_disk_full(folder)):
            pretrain.save_checkpoint(*save, folder)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "step1"]  # no temporary folder, no step2
    assert {p.name: p.read_bytes() for p in (small_disk / "step1").iterdir()} == before
    assert checkpoint_problem(small_disk / "step1") is None


def test_a_tuning_checkpoint_with_a_truncated_optimizer_is_removed_and_trained_again(tmp_path, caplog):
    """Tuning for two epochs, then its last Trainer checkpoint's optimizer.pt cut short: the rerun finds it before
    the Trainer loads it, names it in the log, removes the checkpoint and trains the epoch again from the first."""
    base = build_tiny_model(tmp_path / "base", arch="gpt_neox")
    prepare_task("facts", "generation", {"format": "geonames", "relations": ["capital"]}, tmp_path / "facts.parquet",
                 limit=20)
    data = tmp_path / "narrow.parquet"
    align_data.build_instructions("narrow", {"format": "geonames", "style": "narrow"}, data,
                                  exclude=[tmp_path / "facts.parquet"], limit=48, seed=0)
    args, work = {**TUNE, "epochs": 2, "lr": 1e-3}, tmp_path / "work"
    align.tune(base, data, tmp_path / "once", work, **args)
    expected = {k: v.clone() for k, v in load_file(tmp_path / "once" / "epoch2" / "model.safetensors").items()}
    first, last = sorted(work.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    optimizer = (last / "optimizer.pt").read_bytes()
    (last / "optimizer.pt").write_bytes(optimizer[:len(optimizer) // 2])
    with caplog.at_level(logging.INFO, logger="workflow_scripts.align"):
        align.tune(base, data, tmp_path / "again", work, **args)
    assert f"{last / 'optimizer.pt'}: does not load (PytorchStreamReader failed reading zip archive" in caplog.text
    assert "its checkpoint removed and trained again" in caplog.text and f"resuming from {first}" in caplog.text
    got = load_file(tmp_path / "again" / "epoch2" / "model.safetensors")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=1e-5)
