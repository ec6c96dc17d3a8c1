"""Inference on tiny real models (Llama and GPT-NeoX): every fast path gives the numbers of a
plain one-at-a-time computation (prefix cache vs none, one pass vs per option, chunked vs whole
log-softmax, batched vs one-by-one generation, halved batches after out-of-memory), and a second backend
registered by name runs every kind through the runner."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import build_tiny_model, inference_settings

from workflow_scripts.inference import BACKENDS, InferenceError, check_settings, clm, run_inference
from workflow_scripts.inference.batches import Batches
from workflow_scripts.inference.clm import score_tokens
from workflow_scripts.inference.generation import cut_answer, generate_answers
from workflow_scripts.inference.multiple_choice import encode_options, encode_pair, score_options, shared_prefix
from workflow_scripts.inference.transformers_backend import TransformersBackend, load_model, out_of_memory
from workflow_scripts.tables import read_provenance, read_table, write_table
from workflow_scripts.tasks.prompts import Question, mmlu_prompt

DOCS = pd.DataFrame({"item_id": ["a", "b", "c"],
                     "text": ["The capital of France is Paris. " * 6, "Short one.",
                              "Assert statements are a convenient way to insert debugging assertions " * 3]})


@pytest.fixture(scope="module", params=["llama", "gpt_neox"])
def backend(request, tmp_path_factory):
    """A tiny model of each architecture the study uses, with its tokenizer."""
    folder = build_tiny_model(tmp_path_factory.mktemp(request.param), arch=request.param)
    return TransformersBackend(*load_model(folder, device="cpu"))


@pytest.fixture
def tiny_backend(tiny_model):
    return TransformersBackend(*tiny_model)


def _full_logprobs(model, ids):
    with torch.inference_mode():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)


# ----------------------------------------------------------------------------- language modelling
def test_clm_statistics_a_few_positions_at_a_time_equal_those_of_a_whole_batch(backend):
    """Chunks of 3 positions through the output head against all of a batch at once; the numbers
    themselves are checked against the harness's window layout in test_families.py."""
    tok = backend.tokenizer
    chunked = score_tokens(TransformersBackend(backend.model, tok, logits_chunk=3), DOCS, window=16, batch_size=2)
    whole = score_tokens(backend, DOCS, window=16, batch_size=2)
    assert chunked["item_id"].unique().tolist() == ["a", "b", "c"]  # document order
    pd.testing.assert_frame_equal(chunked, whole, atol=1e-6)
    for item_id, text in zip(DOCS["item_id"], DOCS["text"]):
        assert whole.loc[whole["item_id"] == item_id, "target_id"].tolist() == tok(text)["input_ids"]


def test_clm_window_is_capped_by_the_model_context(tiny_backend):
    long_doc = pd.DataFrame({"item_id": ["x"], "text": ["word " * 1200]})
    raw = score_tokens(tiny_backend, long_doc, window=10_000, batch_size=1)  # context is 512
    assert len(raw) == len(tiny_backend.tokenizer(long_doc["text"][0])["input_ids"])
    assert raw["context_len"].max() == 512


def test_clm_inference_streams_row_groups_with_provenance(tiny_backend, tiny_model_dir, tmp_path, monkeypatch):
    write_table(DOCS, tmp_path / "docs.parquet", provenance={"task": "docs"})
    monkeypatch.setattr(clm, "BATCHES_PER_ROW_GROUP", 1)  # a row group per batch of windows
    out = tmp_path / "raw.parquet"
    run_inference("clm", tmp_path / "docs.parquet", tiny_model_dir, out, threads=1, provenance={"task": "docs"},
                  **inference_settings("clm", batch_size=2, window=16))
    assert pq.ParquetFile(out).num_row_groups > 1
    assert read_provenance(out)["kind"] == "clm" and read_provenance(out)["data"]["task"] == "docs"
    expected = score_tokens(tiny_backend, DOCS, window=16, batch_size=2)
    pd.testing.assert_frame_equal(read_table(out), expected, check_dtype=False, atol=1e-6)


def test_a_task_takes_every_setting_of_its_kind_and_no_other(tiny_model_dir, tmp_path):
    """No setting has a default here (the schema's are passed): one missing, or one of another kind, is named."""
    settings = inference_settings("generation", window=16)
    del settings["stop"]
    with pytest.raises(ValueError, match=r"settings of a generation task: missing stop; unknown window \(it takes "
                                         r"add_bos, backend, batch_size, device, dtype, max_new_tokens, stop\)"):
        run_inference("generation", tmp_path / "facts.parquet", tiny_model_dir, tmp_path / "raw.parquet", threads=1,
                      **settings)
    with pytest.raises(ValueError, match="unknown task kind 'cloze'"):
        check_settings("cloze", settings)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- multiple choice
def test_encode_pair_moves_trailing_spaces_to_the_continuation(tiny_backend):
    tok = tiny_backend.tokenizer
    ctx, cont = encode_pair(tiny_backend, "Answer: ", "A")
    assert ctx == tok("Answer:")["input_ids"]
    assert ctx + cont == tok("Answer: A")["input_ids"]


def test_shared_prefix_leaves_every_sequence_a_token():
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == [1, 2]
    assert shared_prefix([[1, 2, 3], [1, 2, 3]]) == [1, 2]
    assert shared_prefix([[7, 8], [9]]) == []
    assert shared_prefix([[1, 2, 3]]) == []


SHOTS = [Question("s1", "Which is a continent?", ["Asia", "Paris", "Nile", "Alps"], 0),
         Question("s2", "Which is a river?", ["Rome", "Nile", "Peru", "Lima"], 1)]
QUESTIONS = {"geography": ["What is the capital of France?", "Which ocean is the largest?",
                           "Where is Lima?", "Which country has the most people in the world today?",
                           "What is the longest river?"],
             "algebra": ["What is 2 + 2?", "Is 7 prime?", "What is the square root of 81?"],
             "astronomy": ["Which planet is red?"]}


def _mc_items():
    rows = []
    for subject, questions in QUESTIONS.items():
        for n, text in enumerate(questions):
            question = Question(f"{subject}/{n}", text, ["one", "two", "three", "four"], n % 4)
            rows.append({"item_id": question.item_id, "subject": subject, "question": text,
                         "prompt": mmlu_prompt(subject, SHOTS, question), "choices": question.choices,
                         "options": [" A", " B", " C", " D"], "gold": question.gold, "scoring": "letters"})
    return pd.DataFrame(rows)


def _plain_option_logprobs(backend, prompt: str, options: list[str]) -> list[list[float]]:
    """Per option, its tokens' log-probabilities from a sequence of its own (the harness's way)."""
    context, continuations = encode_options(backend, prompt, options)
    return [backend.continuation_logprobs(context, c) for c in continuations]


def test_prefix_cache_and_one_pass_equal_scoring_each_option_separately(backend):
    items = _mc_items()
    for _subject, prompts in items.groupby("subject")["prompt"]:
        if len(prompts) > 1:  # the subject's shots are cached: a long shared prefix
            assert len(shared_prefix([encode_pair(backend, p, " A")[0] for p in prompts])) > 40
    cached = score_options(backend, items, batch_size=3)
    assert not cached["truncated"].any()
    plain = score_options(backend, items, batch_size=1, prefix_cache=False)
    for it, got, without_cache, mass in zip(items.itertuples(), cached["option_logprobs"], plain["option_logprobs"],
                                            cached["letter_mass"]):
        expected = [sum(t) for t in _plain_option_logprobs(backend, it.prompt, it.options)]
        np.testing.assert_allclose(got, expected, atol=1e-5)
        np.testing.assert_allclose(without_cache, expected, atol=1e-5)
        np.testing.assert_allclose(mass, np.exp(expected).sum(), rtol=1e-5)  # the letters' share of the vocabulary
    assert cached["option_token_counts"].map(list).tolist() == [[1] * 4] * len(items)
    assert cached["item_id"].tolist() == items["item_id"].tolist()
    assert cached["gold"].tolist() == items["gold"].tolist()


def test_multi_token_options_fall_back_to_scoring_each_option(tiny_backend):
    items = _mc_items()
    items["options"] = [[" Paris", " Lyon", " Nice", " Lille"]] * len(items)
    assert len(encode_pair(tiny_backend, items["prompt"][0], " Lille")[1]) > 1  # not one token
    raw = score_options(tiny_backend, items, batch_size=2)
    for it, got in zip(items.itertuples(), raw["option_logprobs"]):
        expected = [sum(t) for t in _plain_option_logprobs(tiny_backend, it.prompt, it.options)]
        np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_option_texts_as_continuations_of_one_cached_context_equal_one_sequence_per_option(backend, prefix_cache):
    """Continuation scoring, N = 2 to 7 options of their own count per question: the context once,
    then all options as a batch continuing its cache (prefix_cache; without it, a question's shared
    prefix is empty and every context + option of a batch of questions runs as one right-padded batch),
    against each context + option run alone."""
    items = _mc_items()
    texts = ["Paris", "the Nile river", "Lima, Peru", "Asia", "a very long answer with many words", "Rome", "x"]
    items["options"] = [[" " + t for t in texts[:2 + n % 6]] for n in range(len(items))]
    items["choices"] = [[o[1:] for o in options] for options in items["options"]]
    items["gold"] = [n % len(options) for n, options in enumerate(items["options"])]
    items["scoring"] = "continuation"
    raw = score_options(backend, items, batch_size=3, prefix_cache=prefix_cache)
    assert sorted({len(o) for o in raw["option_logprobs"]}) == [2, 3, 4, 5, 6, 7] and not raw["truncated"].any()
    for it, row in zip(items.itertuples(), raw.itertuples()):
        plain = _plain_option_logprobs(backend, it.prompt, it.options)
        np.testing.assert_allclose(row.option_logprobs, [sum(t) for t in plain], atol=2e-5)
        np.testing.assert_allclose(row.option_min_logprobs, [min(t) for t in plain], atol=2e-5)
        assert list(row.option_token_counts) == [len(t) for t in plain]
        assert np.isnan(row.letter_mass) and row.gold == it.gold


def test_chat_prompts_are_the_user_turn_of_the_chat_template(tiny_backend):
    tok = tiny_backend.tokenizer
    items = _mc_items().head(3).assign(options=[[" Paris", " Lima"]] * 3, choices=[["Paris", "Lima"]] * 3,
                                       gold=0, scoring="continuation")
    with pytest.raises(ValueError, match="no chat template"):
        score_options(tiny_backend, items, batch_size=2, chat=True)
    tok.chat_template = ("{% for m in messages %}<|endoftext|>{{ m['role'] }}\n{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|endoftext|>assistant\n{% endif %}")
    try:
        raw = score_options(tiny_backend, items, batch_size=2, chat=True)
        for it, got in zip(items.itertuples(), raw["option_logprobs"]):
            templated = f"<|endoftext|>user\n{it.prompt}\n<|endoftext|>assistant\n"
            assert tiny_backend.chat_prompt(it.prompt) == templated
            plain = _plain_option_logprobs(tiny_backend, templated, it.options)
            np.testing.assert_allclose(got, [sum(t) for t in plain], atol=2e-5)
    finally:
        tok.chat_template = None


# ----------------------------------------------------------------------------- facts generation
FACTS = pd.DataFrame({"item_id": ["f1", "f2", "f3"], "relation": ["capital"] * 3,
                      "subject": ["France", "Japan", "Peru"],
                      "prompt": ["The capital of France is", "The capital of Japan is", "The capital of Peru is"],
                      "answer": ["Paris", "Tokyo", "Lima"], "aliases": [["Paris"], ["Tokyo"], ["Lima"]]})


def test_batched_generation_equals_one_by_one_and_teacher_forcing(backend):
    model, tok = backend.model, backend.tokenizer
    batched = generate_answers(backend, FACTS, max_new_tokens=6, stop=["\n"], batch_size=3)
    single = generate_answers(backend, FACTS, max_new_tokens=6, stop=["\n"], batch_size=1)
    assert batched["token_ids"].tolist() == single["token_ids"].tolist()
    for b, s in zip(batched["token_logprobs"], single["token_logprobs"]):
        np.testing.assert_allclose(b, s, atol=1e-4)
    for row, prompt in zip(single.itertuples(), FACTS["prompt"]):
        ctx = tok(prompt)["input_ids"]
        lp = _full_logprobs(model, ctx + list(row.token_ids))
        expected = [lp[len(ctx) - 1 + i, t].item() for i, t in enumerate(row.token_ids)]
        np.testing.assert_allclose(row.token_logprobs, expected, atol=1e-4)
        assert row.token_ids[0] == lp[len(ctx) - 1].argmax().item()  # greedy
        gold = tok(prompt + " " + FACTS.set_index("prompt").loc[prompt, "answer"])["input_ids"][len(ctx)]
        assert row.gold_first_ids == [gold]


def test_each_row_of_a_batch_stops_at_its_own_stop_string(tiny_backend):
    tok = tiny_backend.tokenizer
    free = generate_answers(tiny_backend, FACTS, max_new_tokens=8, stop=[], batch_size=3)
    others = "".join(free["generated"][1:])
    stop = next(t for t in (tok.decode([i]) for i in free["token_ids"][0][1:]) if t.strip() and t not in others)
    batched = generate_answers(tiny_backend, FACTS, max_new_tokens=8, stop=[stop], batch_size=3)
    single = generate_answers(tiny_backend, FACTS, max_new_tokens=8, stop=[stop], batch_size=1)
    pd.testing.assert_frame_equal(batched.drop(columns="token_logprobs"), single.drop(columns="token_logprobs"))
    assert batched["generated"][0].endswith(stop) and len(batched["generated"][0]) < len(free["generated"][0])
    assert batched["generated"][1:].tolist() == free["generated"][1:].tolist()  # the others went on


@pytest.mark.parametrize("text,answer", [
    (" Paris. It is large", "Paris"),
    (" Washington, D.C. is", "Washington, D.C. is"),  # a stop after an initial ends no sentence
    (" St. John's. It is", "St. John's"),  # nor one after an abbreviation
    (" St. George's", "St. George's"),
    (" the U.S. dollar. Yes", "the U.S. dollar"),
    (" 3.5 euros. Yes", "3.5 euros"),
    (" Europe... and", "Europe"),
    (" Euro\nThe", "Euro"),
    (" the euro", "the euro"),
    ("\nParis", ""),
])
def test_cut_answer(text, answer):
    assert cut_answer(text, ["\n"]) == answer


# ----------------------------------------------------------------------------- batches and errors
def test_out_of_memory_halves_the_batch_and_keeps_it_halved():
    seen = []

    def step(batch):
        if len(batch) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        seen.append(len(batch))
        return [x * 10 for x in batch]

    batches = Batches(8, out_of_memory)
    results = dict(pair for batch, out in batches.run([3, 1, 4, 1, 5, 9, 2], key=lambda x: x, step=step)
                   for pair in zip(batch, out))
    assert results == {x: x * 10 for x in [3, 1, 4, 5, 9, 2]} and batches.size == 2 and sum(seen) == 7


def test_other_errors_are_not_retried():
    def step(batch):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        list(Batches(4, out_of_memory).run([1, 2], key=lambda x: x, step=step))


def test_nan_weights_raise_a_clear_error(tiny_model_dir):
    backend = TransformersBackend(*load_model(tiny_model_dir, device="cpu"))
    with torch.no_grad():
        backend.model.get_input_embeddings().weight.fill_(float("nan"))
    with pytest.raises(InferenceError, match="NaN or infinite"):
        score_options(backend, _mc_items(), batch_size=2)
    with pytest.raises(InferenceError, match="NaN or infinite"):
        score_tokens(backend, DOCS, window=16, batch_size=2)


# ----------------------------------------------------------------------------- backends
class PlainBackend(TransformersBackend):
    """A second backend: every request a sequence of its own through the model's whole forward pass (no
    key/value cache, no padding, no chunks, no batch), which the transformers backend's fast paths must equal."""

    loaded: list[PlainBackend] = []

    @classmethod
    def load(cls, checkpoint_dir, *, device: str, dtype: str, threads: int) -> PlainBackend:
        backend = super().load(checkpoint_dir, device=device, dtype=dtype, threads=threads)
        cls.loaded.append(backend)
        return backend

    def window_statistics(self, windows):
        stats = []
        for w in windows:
            logprobs = _full_logprobs(self.model, w.inputs)[-len(w.targets):].double()
            stats.append((logprobs[torch.arange(len(w.targets)), torch.tensor(w.targets)].numpy(),
                          logprobs.max(dim=-1).values.numpy(), logprobs.argmax(dim=-1).numpy(),
                          -(logprobs.exp() * logprobs).sum(dim=-1).numpy()))
        return stats

    def generate(self, contexts, max_new_tokens, stop):
        answers = []
        for context in contexts:
            answers += super().generate([context], max_new_tokens, stop)
        return answers

    def next_token_logprobs(self, prefix, suffixes, candidates):
        result = []
        for suffix, ids in zip(suffixes, candidates):
            logprobs = _full_logprobs(self.model, prefix.tokens + suffix)[-1]
            result.append((logprobs[ids].tolist(), logprobs[sorted(set(ids))].exp().sum().item()))
        return result

    def option_logprobs(self, prefix, questions):
        return [[self.continuation_logprobs(context, option) for option in options] for context, options in questions]


def test_a_backend_registered_by_name_runs_every_kind_through_the_runner(tiny_model_dir, tmp_path, monkeypatch, caplog):
    """The runner loads the backend that the settings name from BACKENDS, and the plain backend's tables equal
    the transformers backend's; the backend is part of a finished table's fingerprint."""
    monkeypatch.setitem(BACKENDS, "plain", PlainBackend.load)
    PlainBackend.loaded.clear()
    mc = _mc_items()
    mc.loc[mc["subject"] == "algebra", "options"] = pd.Series([[" Paris", " the Nile river"]] * 3).to_numpy()
    tasks = {"clm": (DOCS, {"window": 16}), "generation": (FACTS, {"max_new_tokens": 6}), "multiple_choice": (mc, {})}
    for kind, (data, own) in tasks.items():
        write_table(data, tmp_path / f"{kind}.parquet")
        tables = {}
        for backend in ("transformers", "plain"):
            out = tmp_path / f"{kind}.{backend}.parquet"
            run_inference(kind, tmp_path / f"{kind}.parquet", tiny_model_dir, out, threads=1,
                          **inference_settings(kind, batch_size=3, backend=backend, **own))
            tables[backend] = read_table(out)
        expected, got = tables["transformers"], tables["plain"]
        assert len(got) == len(expected) > 0 and got["item_id"].tolist() == expected["item_id"].tolist()
        for column in expected.columns:
            for mine, theirs in zip(got[column], expected[column]):
                if isinstance(theirs, str):
                    assert mine == theirs, (kind, column)
                else:
                    np.testing.assert_allclose(np.asarray(mine, dtype=float), np.asarray(theirs, dtype=float),
                                               atol=2e-5, err_msg=f"{kind} {column}")
    assert len(PlainBackend.loaded) == 3
    assert set(read_table(tmp_path / "multiple_choice.plain.parquet")["option_token_counts"].map(len)) == {2, 4}

    caplog.clear()
    with caplog.at_level("INFO"):
        out = tmp_path / "clm.transformers.parquet"
        run_inference("clm", tmp_path / "clm.parquet", tiny_model_dir, out, threads=1,
                      **inference_settings("clm", batch_size=3, backend="plain", window=16))
    assert "taken as it was" not in caplog.text and len(PlainBackend.loaded) == 4
    with pytest.raises(ValueError, match="unknown inference backend 'vllm'; known: transformers, plain"):
        run_inference("clm", tmp_path / "clm.parquet", tiny_model_dir, tmp_path / "x.parquet", threads=1,
                      **inference_settings("clm", backend="vllm"))
