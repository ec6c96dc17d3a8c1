"""Inference on a tiny real model: the batched paths equal plain one-at-a-time computations."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from workflow_scripts import inference
from workflow_scripts.inference import (InferenceError, cut_answer, encode_pair, generate_answers,
                                        score_options, score_tokens)

DOCS = pd.DataFrame({"item_id": ["a", "b", "c"],
                     "text": ["The capital of France is Paris. " * 6, "Short one.",
                              "Assert statements are a convenient way to insert debugging assertions " * 3]})


def _full_logprobs(model, ids):
    with torch.inference_mode():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)


def test_clm_windows_predict_every_token_once_and_match_plain_forward(tiny_model):
    model, tok = tiny_model
    window = 16
    raw = score_tokens(model, tok, DOCS, window=window, batch_size=2)
    for item_id, text in zip(DOCS["item_id"], DOCS["text"]):
        ids = tok(text)["input_ids"]
        rows = raw[raw["item_id"] == item_id]
        assert rows["position"].tolist() == list(range(1, len(ids)))  # each token after the first, once
        assert rows["target_id"].tolist() == ids[1:]
        for start in range(0, len(ids) - 1, window):  # the plain computation, one window at a time
            lp = _full_logprobs(model, ids[start:start + window])
            got = rows[(rows["position"] > start) & (rows["position"] <= start + window)]
            n = len(got)
            np.testing.assert_allclose(got["max_logprob"], lp[:n].max(-1).values.numpy(), atol=1e-5)
            np.testing.assert_array_equal(got["argmax_id"], lp[:n].argmax(-1).numpy())
            expected = lp[torch.arange(n), torch.tensor(ids[start + 1:start + 1 + n])].numpy()
            np.testing.assert_allclose(got["target_logprob"], expected, atol=1e-5)


def test_clm_window_is_capped_by_the_model_context(tiny_model):
    model, tok = tiny_model
    long_doc = pd.DataFrame({"item_id": ["x"], "text": ["word " * 400]})
    raw = score_tokens(model, tok, long_doc, window=10_000, batch_size=1)  # context is 128
    assert len(raw) == len(tok(long_doc["text"][0])["input_ids"]) - 1


def test_encode_pair_moves_trailing_spaces_to_the_continuation(tiny_model):
    _, tok = tiny_model
    ctx, cont = encode_pair(tok, "Answer: ", "A")
    assert ctx == tok("Answer:")["input_ids"]
    assert ctx + cont == tok("Answer: A")["input_ids"]


def _mc_items():
    prompt = ("The following are multiple choice questions (with answers) about geography.\n\n"
              "What is the capital of France?\nA. Paris\nB. Lyon\nC. Nice\nD. Lille\nAnswer:")
    return pd.DataFrame({"item_id": ["q1", "q2", "q3"], "subject": ["geo"] * 3,
                         "prompt": [prompt, "Short?\nA. x\nB. y\nC. z\nD. w\nAnswer:", prompt + " A\n\nMore?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:"],
                         "options": [["A", "B", "C", "D"]] * 3, "gold": [0, 1, 3]})


def test_one_pass_per_question_equals_scoring_each_option_separately(tiny_model):
    model, tok = tiny_model
    items = _mc_items()
    raw = score_options(model, tok, items, batch_size=3)  # left-padded batch, last logits only
    for it, got in zip(items.itertuples(), raw["option_logprobs"]):
        expected = [inference._continuation_logprob(model, *encode_pair(tok, it.prompt, " " + letter))
                    for letter in it.options]
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert raw["gold"].tolist() == [0, 1, 3]


def test_multi_token_options_fall_back_to_scoring_each_option(tiny_model):
    model, tok = tiny_model
    items = _mc_items().assign(options=[["Paris", "Lyon", "Nice", "Lille"]] * 3)
    assert len(encode_pair(tok, items["prompt"][0], " Lille")[1]) > 1  # not one token
    raw = score_options(model, tok, items, batch_size=2)
    it = items.iloc[0]
    expected = [inference._continuation_logprob(model, *encode_pair(tok, it.prompt, " " + o)) for o in it.options]
    np.testing.assert_allclose(raw["option_logprobs"][0], expected, atol=1e-5)


FACTS = pd.DataFrame({"item_id": ["f1", "f2", "f3"], "relation": ["capital"] * 3,
                      "subject": ["France", "Japan", "Peru"],
                      "prompt": ["The capital of France is", "The capital of Japan is", "The capital of Peru is"],
                      "answer": ["Paris", "Tokyo", "Lima"], "aliases": [["Paris"], ["Tokyo"], ["Lima"]]})


def test_batched_generation_equals_one_by_one_and_teacher_forcing(tiny_model):
    model, tok = tiny_model
    batched = generate_answers(model, tok, FACTS, max_new_tokens=6, stop=["\n"], batch_size=3)
    single = generate_answers(model, tok, FACTS, max_new_tokens=6, stop=["\n"], batch_size=1)
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


@pytest.mark.parametrize("text,answer", [
    (" Paris. It is large", "Paris"),
    (" Washington, D.C. is", "Washington, D.C"),
    (" Euro\nThe", "Euro"),
    (" the euro", "the euro"),
    ("\nParis", ""),
])
def test_cut_answer(text, answer):
    assert cut_answer(text, ["\n"]) == answer


def test_nan_weights_raise_a_clear_error(tiny_model_dir):
    model, tok = inference.load_model(tiny_model_dir, device="cpu")
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))
    with pytest.raises(InferenceError, match="NaN or infinite"):
        score_options(model, tok, _mc_items(), batch_size=2)
