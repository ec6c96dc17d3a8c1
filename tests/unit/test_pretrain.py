"""The suite trained here: corpus variants, tokenizer, seeded training that resumes (past a damaged checkpoint, not
through a training state that would run code), the revision layout."""
from __future__ import annotations

import re
from collections import Counter

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from workflow_scripts import pretrain
from workflow_scripts.pretrain import batch_indices, build_corpus, train_model, train_tokenizer
from workflow_scripts.sources import fetch_checkpoint
from workflow_scripts.tables import read_table, write_table

TINY = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    held_out = root / "prose_task.parquet"
    from workflow_scripts.tasks.clm import pydoc_prose
    first = [text for _, text in pydoc_prose({}, {})][:3]
    write_table(pd.DataFrame({"item_id": ["a", "b", "c"], "text": first}), held_out)
    for data in ("standard", "deduped"):
        build_corpus(root / f"{data}.parquet", data=data, seed=0, max_repeats=32, zipf=1.0, exclude=[held_out])
    train_tokenizer(root / "standard.parquet", root / "tokenizer", vocab_size=400)
    return root, first


def _sentences(table):
    return [s for text in table.query("kind == 'fact'")["text"] for s in re.split(r"(?<=[a-z]{2}\.) ", text)]


def test_standard_corpus_is_long_tailed_and_deduped_keeps_each_sentence_once(corpora):
    root, held_out = corpora
    standard, deduped = read_table(root / "standard.parquet"), read_table(root / "deduped.parquet")
    counts = Counter(_sentences(standard))
    assert max(counts.values()) > 5  # the most populous countries' facts repeat
    assert Counter(_sentences(deduped)).most_common(1)[0][1] == 1
    assert set(_sentences(deduped)) == set(counts)  # the same facts, once each
    china = sum("China" in t for t in standard["text"])
    tuvalu = sum("Tuvalu" in t for t in standard["text"])
    assert china > 5 * tuvalu >= 5
    for text in held_out:  # evaluation prose never enters the training corpus
        assert text not in set(standard["text"]) and text not in set(deduped["text"])


def test_corpus_is_reproducible(corpora, tmp_path):
    root, _ = corpora
    build_corpus(tmp_path / "again.parquet", data="standard", seed=0, max_repeats=32, zipf=1.0,
                 exclude=[root / "prose_task.parquet"])
    pd.testing.assert_frame_equal(read_table(tmp_path / "again.parquet"), read_table(root / "standard.parquet"))


def test_batches_depend_only_on_step_and_seed():
    first = [batch_indices(s, 4, 10, seed=0).tolist() for s in range(5)]
    assert first == [batch_indices(s, 4, 10, seed=0).tolist() for s in range(5)]
    epoch0 = sum(first[:2], []) + first[2][:2]  # steps 0, 1 and half of 2 cover epoch 0
    assert sorted(epoch0) == list(range(10))
    assert first != [batch_indices(s, 4, 10, seed=1).tolist() for s in range(5)]


SETTINGS = dict(size=TINY, steps=2, checkpoints=[1, 2], batch_size=2, seq_len=32, lr=1e-2, warmup=1, seed=0, threads=1)


def _train(root, out, work, **changes):
    train_model(root / "standard.parquet", root / "tokenizer", out, work, **{**SETTINGS, **changes})


def test_two_step_training_resumes_from_its_checkpoint_with_the_same_weights(corpora, tmp_path, monkeypatch):
    root, _ = corpora
    _train(root, tmp_path / "straight", tmp_path / "work-straight")

    save = pretrain.save_checkpoint

    def killed_at_step_2(*args):
        if args[-1].name == "step2":
            raise KeyboardInterrupt("killed while saving step 2")
        save(*args)

    monkeypatch.setattr(pretrain, "save_checkpoint", killed_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        _train(root, tmp_path / "resumed", tmp_path / "work-resumed")
    assert not (tmp_path / "resumed").exists()  # nothing published from a killed run
    monkeypatch.setattr(pretrain, "save_checkpoint", save)
    _train(root, tmp_path / "resumed", tmp_path / "work-resumed")

    for step in ("step1", "step2"):
        a = load_file(str(tmp_path / "straight" / step / "model.safetensors"))
        b = load_file(str(tmp_path / "resumed" / step / "model.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), step
    loss_a = read_table(tmp_path / "straight" / "loss.parquet")
    loss_b = read_table(tmp_path / "resumed" / "loss.parquet")
    pd.testing.assert_frame_equal(loss_a, loss_b)
    assert loss_a["step"].tolist() == [1, 2] and loss_a["loss"].notna().all()


def test_suite_layout_reads_as_revisions_of_a_local_source(corpora, tmp_path):
    root, _ = corpora
    _train(root, tmp_path / "suite", tmp_path / "work")
    assert sorted(p.name for p in (tmp_path / "suite").iterdir()) == ["loss.parquet", "step1", "step2"]
    fetch_checkpoint(f"local:{tmp_path / 'suite'}", "step1", tmp_path / "ckpt")
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    assert model.config.model_type == "gpt_neox" and model.config.hidden_size == 16
    assert not (tmp_path / "ckpt" / "training_state.pt").exists()


def test_checkpoints_saved_in_shards_are_published_whole(corpora, tmp_path, monkeypatch):
    """A checkpoint that transformers saves in shards (model.safetensors.index.json and the files it
    names) is published with every shard: it loads with the weights of the same training saved whole."""
    from transformers import AutoModelForCausalLM, PreTrainedModel

    root, _ = corpora
    _train(root, tmp_path / "whole", tmp_path / "work-whole")
    save = PreTrainedModel.save_pretrained
    monkeypatch.setattr(PreTrainedModel, "save_pretrained",
                        lambda self, *args, **kwargs: save(self, *args, **{**kwargs, "max_shard_size": "20KB"}))
    _train(root, tmp_path / "sharded", tmp_path / "work-sharded")
    folder = tmp_path / "sharded" / "step2"
    assert (folder / "model.safetensors.index.json").is_file() and len(list(folder.glob("model-*.safetensors"))) > 1
    whole = AutoModelForCausalLM.from_pretrained(tmp_path / "whole" / "step2").state_dict()
    sharded = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    assert whole.keys() == sharded.keys() and all(torch.equal(whole[k], sharded[k]) for k in whole)


def test_a_work_folder_of_other_settings_is_not_resumed(corpora, tmp_path):
    root, _ = corpora
    _train(root, tmp_path / "a", tmp_path / "work")
    _train(root, tmp_path / "b", tmp_path / "work", lr=5e-3)
    _train(root, tmp_path / "c", tmp_path / "fresh")
    a = load_file(str(tmp_path / "a" / "step2" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "step2" / "model.safetensors"))
    c = load_file(str(tmp_path / "c" / "step2" / "model.safetensors"))
    assert all(torch.equal(a[k], c[k]) for k in a)  # seeded: same settings, same weights
    assert not all(torch.equal(a[k], b[k]) for k in a)  # another learning rate was trained, not resumed


def test_checkpoints_must_end_at_the_last_step(corpora, tmp_path):
    root, _ = corpora
    with pytest.raises(ValueError, match="end with the last step 3"):
        _train(root, tmp_path / "o", tmp_path / "w", steps=3)


def _truncated(path) -> None:
    """Cut the last quarter of a file off, as a copy or a disk that lost its end would."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 3 // 4])


@pytest.mark.parametrize("damaged", ["model.safetensors", "training_state.pt"])
def test_a_damaged_checkpoint_is_removed_and_trained_again(corpora, tmp_path, damaged, caplog):
    """A complete-looking checkpoint with a truncated file: found before it is trusted, named in the log, removed,
    and the training resumes from the checkpoint before it, to the weights of an undamaged run."""
    import logging

    root, _ = corpora
    _train(root, tmp_path / "straight", tmp_path / "work")
    expected = {k: v.clone() for k, v in load_file(str(tmp_path / "straight" / "step2" / "model.safetensors")).items()}
    _truncated(tmp_path / "work" / "step2" / damaged)  # published by a hard link: the published file too
    with caplog.at_level(logging.INFO, logger="workflow_scripts.pretrain"):
        _train(root, tmp_path / "again", tmp_path / "work")
    assert f"{tmp_path / 'work' / 'step2' / damaged}: " in caplog.text
    assert "checkpoint removed, trained again from step 1" in caplog.text and "resuming from step 1" in caplog.text
    got = load_file(str(tmp_path / "again" / "step2" / "model.safetensors"))
    assert all(torch.equal(expected[k], got[k]) for k in expected)


class _Payload:
    """An object whose unpickling creates a file: what a checkpoint tampered with could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_training_state_that_would_run_code_is_refused_naming_the_file(corpora, tmp_path):
    from workflow_scripts.tables import UntrustedFileError

    root, _ = corpora
    _train(root, tmp_path / "out", tmp_path / "work")
    state_file = tmp_path / "work" / "step2" / "training_state.pt"
    state = torch.load(state_file, weights_only=True)
    torch.save({**state, "losses": state["losses"] + [_Payload(tmp_path / "ran")]}, state_file)
    with pytest.raises(UntrustedFileError, match=rf"^{re.escape(str(state_file))}: refused, loading it would run code "
                                                 r"\(Unsupported global: GLOBAL .*open"):
        _train(root, tmp_path / "again", tmp_path / "work")
    assert not (tmp_path / "ran").exists() and not (tmp_path / "again").exists()
