"""Resumable work keyed on its fingerprint (settings, inputs, code, libraries): the digests, the work
folder that is kept or emptied, folders published whole, and a code edit that retrains pretraining and
tuning from step 0."""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model
from safetensors.torch import load_file

from workflow_scripts import align, align_data, pretrain, tables
from workflow_scripts.tables import atomic_dir, module_sources, path_digest, prepare_work_dir, stage_fingerprint

PACKAGE = Path(tables.__file__).parent
TINY = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
PRETRAIN = dict(size=TINY, steps=2, checkpoints=[1, 2], batch_size=2, seq_len=32, lr=1e-2, warmup=1, seed=0, threads=1)
TUNE = dict(tuning="full", lora={}, epochs=2, batch_size=16, gradient_accumulation_steps=1, lr=1e-3, max_length=96,
            seed=0, parallel={"processes": 1, "strategy": "ddp"}, threads=1)


@pytest.fixture
def edited_copy(tmp_path, monkeypatch):
    """``edit(module, old, new)``: a copy of the package (importable as ``edited_scripts``) with ``old``
    replaced by ``new`` in one module's source; returns that module of the copy."""
    root = tmp_path / "edited"
    shutil.copytree(PACKAGE, root / "edited_scripts", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.syspath_prepend(str(root))

    def edit(module: str, old: str, new: str):
        path = root / "edited_scripts" / f"{module}.py"
        source = path.read_text()
        assert old in source, f"{old!r} not in {path}"
        path.write_text(source.replace(old, new))
        importlib.invalidate_caches()
        return importlib.import_module(f"edited_scripts.{module.replace('/', '.')}")

    yield edit
    for name in [m for m in sys.modules if m.split(".")[0] == "edited_scripts"]:
        del sys.modules[name]


# ----------------------------------------------------------------------------- the helper
def test_code_digests_cover_the_stage_and_every_module_it_imports(edited_copy):
    tasks = ["tasks", "tasks.clm", "tasks.files", "tasks.format", "tasks.generation", "tasks.multiple_choice",
             "tasks.prompts", "tasks.registry"]  # a package: its __init__ and every module it imports
    assert list(module_sources("workflow_scripts.pretrain")) == ["__init__", "kinds", "names", "pretrain", "tables",
                                                                *tasks]
    # faults: NOT_RESULT_CODE
    assert list(module_sources("workflow_scripts.align")) == ["__init__", "align", "names", "tables"]
    assert "inference" not in module_sources("workflow_scripts.align")  # a module it does not import
    # the align stage's three modules import none of each other: an edit of one leaves the others' work
    assert list(module_sources("workflow_scripts.align_data")) == ["__init__", "align_data", "kinds", "names", "tables",
                                                                  *tasks]
    importlib.import_module("workflow_scripts.diversity")
    assert list(module_sources("workflow_scripts.diversity")) == ["__init__", "diversity", "names", "tables"]
    files = edited_copy("tasks/files", "def require(", "def require(  # edited\n")  # a helper pretrain imports
    importlib.import_module("edited_scripts.pretrain")
    original, copy = module_sources("workflow_scripts.pretrain"), module_sources("edited_scripts.pretrain")
    assert [k for k in original if original[k] != copy[k]] == ["tasks.files"]  # by content: the others are the same
    assert copy["tasks.files"] == hashlib.sha256(Path(files.__file__).read_bytes()).hexdigest()


def test_folder_digest_tells_apart_contents_of_the_same_size_and_names(tmp_path):
    """A retrained model has the same file names and sizes: its digest must still change, or the work
    folders of the stages after it are resumed on the old one."""
    for name, value in (("a", b"\x00" * 64), ("b", b"\x00" * 63 + b"\x01"), ("c", b"\x00" * 64)):
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "sub" / "model.safetensors").write_bytes(value)
    assert path_digest(tmp_path / "a") != path_digest(tmp_path / "b")
    assert path_digest(tmp_path / "a") == path_digest(tmp_path / "c")
    (tmp_path / "c" / "sub" / "model.safetensors").rename(tmp_path / "c" / "sub" / "other.safetensors")
    assert path_digest(tmp_path / "a") != path_digest(tmp_path / "c")
    assert path_digest(tmp_path / "a" / "sub" / "model.safetensors") == hashlib.sha256(b"\x00" * 64).hexdigest()
    with pytest.raises(FileNotFoundError, match="nowhere: no such file or folder"):
        path_digest(tmp_path / "nowhere")


def test_a_folder_is_published_whole_or_not_at_all(tmp_path):
    """``atomic_dir``: the folder built beside replaces the old one only when its block succeeds, with
    the mode of a folder made here; a failed block and a killed one's leftovers leave nothing behind."""
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "weights").write_text("old")
        assert not out.exists() and tmp.parent == tmp_path
    (tmp_path / "made").mkdir()
    assert out.stat().st_mode == (tmp_path / "made").stat().st_mode
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("failed")
    assert (out / "weights").read_text() == "old"
    (tmp_path / ".model.tmp-left").mkdir()  # left by a SIGKILL
    with atomic_dir(out) as tmp:
        (tmp / "weights").write_text("new")
    assert [p.name for p in out.iterdir()] == ["weights"] and (out / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["made", "model"]


def test_a_work_folder_is_kept_for_its_fingerprint_and_emptied_for_another(tmp_path, caplog):
    (tmp_path / "data.parquet").write_bytes(b"rows")
    work = tmp_path / "work"

    def fingerprint(**settings):
        return stage_fingerprint("workflow_scripts.align", {"lr": 1e-3, "epochs": 2, **settings},
                                 {"data": tmp_path / "data.parquet"})

    assert not prepare_work_dir(work, fingerprint())  # nothing to resume: made, fingerprint written
    assert json.loads((work / "fingerprint.json").read_text())["settings"] == {"epochs": 2, "lr": 1e-3}
    (work / "checkpoint-1").mkdir()
    assert prepare_work_dir(work, fingerprint()) and (work / "checkpoint-1").is_dir()

    with caplog.at_level(logging.INFO, logger="workflow_scripts.tables"):
        assert not prepare_work_dir(work, fingerprint(lr=5e-4))
    assert "work of another fingerprint, differing in settings (lr): starting afresh" in caplog.text
    assert sorted(p.name for p in work.iterdir()) == ["fingerprint.json"]

    caplog.clear()
    (tmp_path / "data.parquet").write_bytes(b"other rows")
    changed = fingerprint(lr=5e-4)
    changed["code"]["align"] = "0" * 64
    with caplog.at_level(logging.INFO, logger="workflow_scripts.tables"):
        assert not prepare_work_dir(work, changed)
    assert "differing in code (align); inputs (data): starting afresh" in caplog.text

    caplog.clear()
    (work / "fingerprint.json").unlink()
    (work / "step1").mkdir()
    with caplog.at_level(logging.INFO, logger="workflow_scripts.tables"):
        assert not prepare_work_dir(work, changed)
    assert "work without a fingerprint: starting afresh" in caplog.text and not (work / "step1").exists()


# ----------------------------------------------------------------------------- pretraining
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("fingerprint-corpus")
    pretrain.build_corpus(root / "standard.parquet", data="standard", seed=0, max_repeats=8, zipf=1.0)
    pretrain.train_tokenizer(root / "standard.parquet", root / "tokenizer", vocab_size=400)
    return root


class Saves(list):
    """The checkpoints that ``module.save_checkpoint`` writes from now on; a KeyboardInterrupt instead
    of the one named ``die_at`` while that is set."""

    def __init__(self, monkeypatch, module, die_at=None):
        super().__init__()
        self.die_at, save = die_at, module.save_checkpoint

        def recorded(*args):
            if args[-1].name == self.die_at:
                raise KeyboardInterrupt(f"killed while saving {self.die_at}")
            self.append(args[-1].name)
            save(*args)

        monkeypatch.setattr(module, "save_checkpoint", recorded)


def test_pretraining_resumes_unchanged_code_and_restarts_after_a_code_edit(corpus, tmp_path, monkeypatch, caplog,
                                                                          edited_copy):
    inputs = (corpus / "standard.parquet", corpus / "tokenizer")
    work = tmp_path / "work"
    saved = Saves(monkeypatch, pretrain, die_at="step2")
    with pytest.raises(KeyboardInterrupt):
        pretrain.train_model(*inputs, tmp_path / "out", work, **PRETRAIN)
    assert saved == ["step1"]

    saved.clear()
    saved.die_at = None
    pretrain.train_model(*inputs, tmp_path / "out", work, **PRETRAIN)
    assert saved == ["step2"]  # nothing changed: resumed from step 1
    before = load_file(tmp_path / "out" / "step2" / "model.safetensors")

    edited = edited_copy("pretrain", "betas=(0.9, 0.95)", "betas=(0.5, 0.95)")  # another optimiser
    saved = Saves(monkeypatch, edited)
    with caplog.at_level(logging.INFO):
        edited.train_model(*inputs, tmp_path / "out", work, **PRETRAIN)
    assert saved == ["step1", "step2"]  # a finished work folder, but of other code: trained from step 0
    assert "differing in code (pretrain): starting afresh" in caplog.text
    after = load_file(tmp_path / "out" / "step2" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the new code's weights, not the old ones


# ----------------------------------------------------------------------------- tuning
@pytest.fixture(scope="module")
def tuning_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fingerprint-tuning")
    base = build_tiny_model(root / "base", arch="gpt_neox")
    align_data.build_instructions("narrow", {"format": "geonames", "style": "narrow"}, root / "narrow.parquet",
                                  limit=48, seed=0)
    return base, root / "narrow.parquet"


def _training_steps(monkeypatch) -> list[int]:
    """One entry per batch that trl's SFTTrainer trains on from now on."""
    from trl import SFTTrainer

    steps, step = [], SFTTrainer.training_step

    def counted(self, *args, **kwargs):
        steps.append(1)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "training_step", counted)
    return steps


def test_tuning_resumes_unchanged_code_and_restarts_after_a_code_edit(tuning_inputs, tmp_path, monkeypatch, caplog,
                                                                      edited_copy):
    base, data = tuning_inputs
    work = tmp_path / "work"
    steps = _training_steps(monkeypatch)
    align.tune(base, data, tmp_path / "out", work, **TUNE)  # 48 examples, 16 a batch: 3 steps an epoch
    assert len(steps) == 6
    shutil.rmtree(max(work.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])))  # killed after epoch 1

    steps.clear()
    align.tune(base, data, tmp_path / "out", work, **TUNE)
    assert len(steps) == 3  # nothing changed: resumed after epoch 1
    before = load_file(tmp_path / "out" / "epoch2" / "model.safetensors")

    edited = edited_copy("align", "completion_only_loss=True", "completion_only_loss=False")  # loss on prompts too
    steps.clear()
    with caplog.at_level(logging.INFO):
        edited.tune(base, data, tmp_path / "out", work, **TUNE)
    assert len(steps) == 6  # a finished work folder, but of other code: trained from step 0
    assert "differing in code (align): starting afresh" in caplog.text
    after = load_file(tmp_path / "out" / "epoch2" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
