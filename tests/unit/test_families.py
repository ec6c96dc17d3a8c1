"""Numbers comparable with lm-evaluation-harness on every model family: tiny models built with
``from_config`` (a Llama with a BOS-adding tokenizer, GPT-NeoX without BOS, Gemma 2 with
soft-capping, Cohere and Granite with scaled heads), each fast path checked against a plain
computation written from the harness's definitions (``get_rolling_token_windows``,
``_loglikelihood_tokens``' truncation, ``generate_until``'s room for new tokens) and the
transformers perplexity guide."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAMILIES, build_family_model, build_llama_tokenizer, build_tokenizer, inference_settings

from workflow_scripts.inference import InferenceError, generation, run_inference, transformers_backend
from workflow_scripts.inference.clm import score_tokens
from workflow_scripts.inference.generation import first_text_token, generate_answers
from workflow_scripts.inference.multiple_choice import encode_options, score_options
from workflow_scripts.inference.transformers_backend import (
    TransformersBackend,
    TransformersCodec,
    check_output_head,
    context_length,
    output_logits,
    resolve_add_bos,
)
from workflow_scripts.tables import read_provenance, write_table
from workflow_scripts.tasks.prompts import Question, mmlu_prompt

DOCS = pd.DataFrame({"item_id": ["long", "short", "one"],
                     "text": ["The capital of France is Paris, and the capital of Peru is Lima. " * 4,
                              "Assert statements insert debugging assertions.", "Paris"]})


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    folder = build_family_model(tmp_path_factory.mktemp(request.param), request.param, max_positions=96)
    model, tok = transformers_backend.load_model(folder, device="cpu")
    return request.param, model, tok


def _logprobs(model, ids: list[int]) -> torch.Tensor:
    """Log-softmax of the model's own logits at every position of one sequence (the plain computation)."""
    with torch.inference_mode():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)


def encode(tok, text: str, bos: bool) -> list[int]:
    """The token ids of one text as the transformers backend encodes it."""
    return TransformersCodec(tok).encode([text], bos)[0]


def _prefix(tok) -> int:
    return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id


# ----------------------------------------------------------------------------- output head
def test_output_head_gives_the_logits_of_the_models_own_forward(family):
    name, model, _ = family
    probe = torch.arange(10)[None]
    with torch.inference_mode():
        expected = model(input_ids=probe).logits[0]
        hidden = model.base_model(input_ids=probe).last_hidden_state[0]
        bare = model.get_output_embeddings()(hidden)
        torch.testing.assert_close(output_logits(model, model.get_output_embeddings(), hidden), expected)
    if name in ("gemma2", "cohere", "granite"):  # the family's own step after the layer matters here
        assert (bare - expected).abs().max() > 0.5
    check_output_head(model)


@pytest.mark.parametrize("name", ["gemma2", "cohere", "granite"])
def test_a_family_step_after_the_output_layer_not_applied_is_an_error(name, tmp_path, monkeypatch):
    model, tok = transformers_backend.load_model(build_family_model(tmp_path, name, max_positions=96), device="cpu")
    monkeypatch.setattr(transformers_backend, "output_logits",
                        lambda model, head, hidden: head(hidden))  # the bare layer
    with pytest.raises(InferenceError, match="after its output layer"):
        score_tokens(TransformersBackend(model, tok), DOCS, window=12, batch_size=2)


# ----------------------------------------------------------------------------- CLM windows
def _rolling_reference(tokens: list[int], prefix: int, window: int) -> list[tuple[list[int], int]]:
    """(context, target) of every token as lm-evaluation-harness's get_rolling_token_windows with
    context_len=1 lays them out: the first window [prefix] + tokens[:window-1] predicts
    tokens[:window]; each later window predicts up to `window` tokens from the `window` tokens
    before its end."""
    pairs = []
    first = min(window, len(tokens))
    for j in range(first):
        pairs.append(([prefix, *tokens[:j]], tokens[j]))
    predicted = first
    while predicted < len(tokens):
        count = min(len(tokens) - predicted, window)
        end = predicted + count
        inputs = tokens[end - window - 1:end - 1]
        for j in range(predicted, end):
            pairs.append((inputs[:len(inputs) - (end - 1 - j)], tokens[j]))
        predicted = end
    return pairs


def _guide_reference(tokens: list[int], prefix: int, window: int, stride: int) -> list[tuple[list[int], int]]:
    """(context, target) of every token as the transformers perplexity guide's loop scores them,
    over [prefix] + tokens with max_length = window + 1 (its windows hold their last target too)."""
    sequence, pairs, prev_end = [prefix, *tokens], [], 0
    for begin in range(0, len(sequence), stride):
        end = min(begin + window + 1, len(sequence))
        target_len = end - prev_end if prev_end else end - begin - 1  # the first window: all but its first
        for k in range(end - target_len, end):
            pairs.append((sequence[begin:k], sequence[k]))
        prev_end = end
        if end == len(sequence):
            break
    return pairs


@pytest.mark.parametrize("window_mode", ["rolling", {"stride": 5}, {"stride": 12}])
def test_clm_windows_score_every_token_once_as_the_reference(family, window_mode):
    _, model, tok = family
    window = 12
    raw = score_tokens(TransformersBackend(model, tok, logits_chunk=7), DOCS, window=window, window_mode=window_mode,
                       batch_size=2)
    for item_id, text in zip(DOCS["item_id"], DOCS["text"]):
        tokens = tok(text, add_special_tokens=False)["input_ids"]
        rows = raw[raw["item_id"] == item_id]
        assert rows["position"].tolist() == list(range(len(tokens)))  # every token, once, the first too
        assert rows["target_id"].tolist() == tokens
        pairs = (_rolling_reference(tokens, _prefix(tok), window) if window_mode == "rolling"
                 else _guide_reference(tokens, _prefix(tok), window, window_mode["stride"]))
        assert [target for _, target in pairs] == tokens
        assert rows["context_len"].tolist() == [len(context) for context, _ in pairs]
        expected = [_logprobs(model, context)[-1] for context, _ in pairs]
        np.testing.assert_allclose(rows["target_logprob"], [lp[t].item() for lp, t in zip(expected, tokens)],
                                   atol=2e-5)
        np.testing.assert_allclose(rows["max_logprob"], [lp.max().item() for lp in expected], atol=2e-5)
        assert rows["argmax_id"].tolist() == [lp.argmax().item() for lp in expected]
    if window_mode == "rolling":  # the last window of the long document reaches back a full window
        long = raw[raw["item_id"] == "long"]
        assert long["context_len"].iloc[-1] == window and long["context_len"].min() == 1


def test_a_stride_longer_than_the_window_is_an_error(family):
    _, model, tok = family
    with pytest.raises(ValueError, match="stride 13 must be between 1 and the window"):
        score_tokens(TransformersBackend(model, tok), DOCS, window=12, window_mode={"stride": 13}, batch_size=2)


# ----------------------------------------------------------------------------- context limits
def _long_mc_items(tok, context: int) -> pd.DataFrame:
    shots = [Question(f"s{k}", f"Which of these is the capital city of country number {k}?",
                      ["Paris", "Lima", "Rome", "Oslo"], k % 4) for k in range(3)]
    rows = []
    for n, text in enumerate(["What is the capital of France?", "Where is Lima?", "Is Oslo in Norway?"]):
        question = Question(f"geo/{n}", text, ["one", "two", "three", "four"], n % 4)
        rows.append({"item_id": question.item_id, "subject": "geo", "question": text,
                     "prompt": mmlu_prompt("geo", shots[:n], question), "choices": question.choices,
                     "options": [" A", " B", " C", " D"], "gold": question.gold, "scoring": "letters"})
    items = pd.DataFrame(rows)
    lengths = [len(tok(p)["input_ids"]) for p in items["prompt"]]
    assert max(lengths) > context > min(lengths)  # some prompts are truncated, at least one is not
    return items


def test_multiple_choice_prompts_past_the_context_keep_their_last_tokens_as_the_harness(family):
    _, model, tok = family
    limit = context_length(model, tok)
    items = _long_mc_items(tok, limit)
    bos = resolve_add_bos(tok)
    for scoring_options in (None, ["Paris", "Lima", "Rome", "Oslo"]):  # one-token letters; several-token texts
        if scoring_options:
            items = items.assign(options=[[" " + o for o in scoring_options]] * len(items), scoring="continuation")
        raw = score_options(TransformersBackend(model, tok), items, batch_size=2, bos=bos)
        for it, got, truncated in zip(items.itertuples(), raw["option_logprobs"], raw["truncated"]):
            context, continuations = encode_options(TransformersCodec(tok), it.prompt, list(it.options), bos)
            expected = []
            for continuation in continuations:  # the harness: (context + continuation)[-(max_length + 1):][:-1]
                whole = (context + continuation)[-(limit + 1):]
                lp = _logprobs(model, whole[:-1])
                expected.append(sum(lp[len(whole) - 1 - len(continuation) + k, t].item()
                                    for k, t in enumerate(continuation)))
            np.testing.assert_allclose(got, expected, atol=2e-5)
            assert truncated == (len(context) + max(map(len, continuations)) - 1 > limit)
        assert raw["truncated"].any() and not raw["truncated"].all()


def test_generation_prompts_keep_room_for_the_new_tokens_as_the_harness(family):
    _, model, tok = family
    limit, new = context_length(model, tok), 6
    facts = pd.DataFrame({"item_id": ["long", "short"], "relation": ["capital"] * 2, "subject": ["A", "B"],
                          "prompt": ["Paris is in France. " * 30 + "The capital of Peru is", "The capital of Peru is"],
                          "answer": ["Lima"] * 2, "aliases": [["Lima"]] * 2})
    bos = resolve_add_bos(tok)
    raw = generate_answers(TransformersBackend(model, tok), facts, max_new_tokens=new, stop=[], batch_size=2, bos=bos)
    assert raw["truncated"].tolist() == [True, False]
    for row, prompt in zip(raw.itertuples(), facts["prompt"]):
        ids = encode(tok, prompt, bos)[-(limit - new):]  # the harness's left_truncate_len = max_length - max_gen_toks
        greedy = []
        for _ in range(new):  # plain greedy decoding, one token at a time
            greedy.append(_logprobs(model, ids + greedy)[-1].argmax().item())
        assert list(row.token_ids) == greedy[:len(row.token_ids)]


def test_context_length_is_found_as_the_harness_finds_it(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(tmp_path)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=8, n_layer=1, n_head=2, n_positions=48,
                                      bos_token_id=0, eos_token_id=0))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=40,
                                         bos_token_id=0, eos_token_id=0, pad_token_id=0))
    assert context_length(gpt2, tok) == 48 and context_length(llama, tok) == 40
    from types import SimpleNamespace

    from transformers import PretrainedConfig

    unsized = SimpleNamespace(config=PretrainedConfig())  # no length in the config: the tokenizer's, else 2048
    assert context_length(unsized, tok) == 2048
    tok.model_max_length = 32
    assert context_length(unsized, tok) == 32


# ----------------------------------------------------------------------------- special tokens
def test_add_bos_auto_encodes_as_the_tokenizer_does_by_default(tmp_path):
    llama, neox = build_llama_tokenizer(tmp_path / "llama"), build_tokenizer(tmp_path / "neox")
    text = "The capital of France is"
    assert resolve_add_bos(llama) is True and resolve_add_bos(neox) is False
    for tok in (llama, neox):  # lm-evaluation-harness's HF backend, add_bos_token unset: tokenizer(text)
        assert encode(tok, text, resolve_add_bos(tok)) == tok(text)["input_ids"]
    assert encode(llama, text, False) == llama(text, add_special_tokens=False)["input_ids"]
    assert encode(neox, text, resolve_add_bos(neox)) == neox(text, add_special_tokens=False)["input_ids"]
    context, _ = encode_options(TransformersCodec(llama), text, [" Paris"], resolve_add_bos(llama, False))
    assert context[0] != llama.bos_token_id
    assert encode_options(TransformersCodec(llama), text, [" Paris"], resolve_add_bos(llama, True))[0][0] == \
        llama.bos_token_id
    with pytest.raises(ValueError, match="no beginning-of-sequence token"):
        resolve_add_bos(neox, True)


def test_an_eos_the_tokenizer_appends_is_never_scored(tmp_path):
    tok = build_llama_tokenizer(tmp_path, append_eos=True)
    assert tok("Answer: A")["input_ids"][-1] == tok.eos_token_id
    context, (continuation,) = encode_options(TransformersCodec(tok), "Answer:", [" A"], resolve_add_bos(tok))
    assert tok.eos_token_id not in context + continuation
    assert context + continuation == tok("Answer: A")["input_ids"][:-1]


def test_the_first_token_rule_reads_the_first_token_carrying_text(tmp_path):
    tok = build_llama_tokenizer(tmp_path)
    ids = tok(" 1945", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[:2] == ["▁", "1"]  # digits split: a bare "▁" first
    assert first_text_token(TransformersCodec(tok), ids) == 1
    prompt = "The war ended in"
    context = encode(tok, prompt, True)
    assert generation._first_tokens(TransformersCodec(tok), context, prompt, ["1945", "Paris"], True) == sorted(
        {tok.convert_tokens_to_ids("1"), tok(" Paris", add_special_tokens=False)["input_ids"][0]})


@pytest.mark.parametrize("name", ["llama", "gpt_neox"])  # a tokenizer adding BOS, one without
def test_the_add_bos_choice_is_in_the_provenance(name, tmp_path):
    folder = build_family_model(tmp_path / "model", name, max_positions=64)
    facts = pd.DataFrame({"item_id": ["f"], "relation": ["capital"], "subject": ["Peru"],
                          "prompt": ["The capital of Peru is"], "answer": ["Lima"], "aliases": [["Lima"]]})
    write_table(facts, tmp_path / "facts.parquet")
    for add_bos in ("auto", False):
        out = tmp_path / f"raw-{add_bos}.parquet"
        run_inference("generation", tmp_path / "facts.parquet", folder, out, threads=1,
                      **inference_settings("generation", max_new_tokens=3, add_bos=add_bos))
        info = read_provenance(out)
        assert info["add_bos"] == add_bos and info["bos"] == (name == "llama" and add_bos == "auto")
