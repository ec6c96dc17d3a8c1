"""The self-evaluation methods: P(True) and verbalized confidence, a second inference pass over the first
pass's answers. Prompts character for character, the reply parser on real-looking replies, the second
pass against a plain one-item-at-a-time computation, unparsed replies through recalibration, metrics and
comparisons, and what a prompt change reruns."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import inference_settings

from workflow_scripts import self_eval
from workflow_scripts.compare import compare
from workflow_scripts.confidence import extract_confidence, guess_option, p_true, parse_verbalized, proposals
from workflow_scripts.inference import run_inference
from workflow_scripts.inference.multiple_choice import encode_pair
from workflow_scripts.inference.transformers_backend import TransformersCodec, load_model
from workflow_scripts.recalibrate import recalibrate
from workflow_scripts.scoring import score
from workflow_scripts.self_eval import P_TRUE_OPTIONS, P_TRUE_PROMPT, VERBALIZED_PROMPT, self_evaluate_checkpoint
from workflow_scripts.tables import read_provenance, read_table, write_table


def test_the_p_true_prompt_is_kadavath_et_als():
    """Kadavath et al. (2022), section 3: question, proposed answer, the two options, the cue."""
    assert P_TRUE_PROMPT.format(question="Who was the first president of the United States?",
                                answer="George Washington") == (
        "Question: Who was the first president of the United States?\n"
        "Proposed Answer: George Washington\n"
        "Is the proposed answer:\n"
        " (A) True\n"
        " (B) False\n"
        "The proposed answer is:")
    assert P_TRUE_OPTIONS == (" True", " False")


def test_the_verbalized_prompt_is_tian_et_als_verb_1s_top_1():
    """Tian et al. (2023), "Just Ask for Calibration", the prompt Verb. 1S top-1 (as LM-Polygraph has it)."""
    assert VERBALIZED_PROMPT.format(question="What is the capital of France?") == (
        "Provide your best guess and the probability that it is correct (0.0 to 1.0) for the following question. "
        "Give ONLY the guess and probability, no other words or explanation. For example:\n\n"
        "Guess: <most likely guess, as short as possible; not a complete sentence, just the guess!>\n"
        " Probability: <the probability between 0.0 and 1.0 that your guess is correct, without any extra "
        "commentary whatsoever; just the probability!>\n\n"
        "The question is: What is the capital of France?")


def test_the_question_is_the_facts_prompt_or_the_question_with_its_lettered_options():
    facts = pd.DataFrame({"item_id": ["f"], "prompt": ["The capital of France is "]})
    mc = pd.DataFrame({"item_id": ["q"], "question": [" What is the capital of France?\n"],
                       "choices": [["Paris", "Lyon", "Nice"]]})
    assert self_eval.questions("generation", facts).to_dict() == {"f": "The capital of France is"}
    assert self_eval.questions("multiple_choice", mc).to_dict() == {
        "q": "What is the capital of France?\nA. Paris\nB. Lyon\nC. Nice"}


@pytest.mark.parametrize("reply, parsed", [
    ("Guess: Paris\nProbability: 0.9", ("Paris", 0.9)),
    ("Guess: Paris\n Probability: 0.85", ("Paris", 0.85)),  # the prompt's own layout
    ("guess: Paris\nprobability: .7", ("Paris", 0.7)),
    ("Guess: Paris\nProbability: 1", ("Paris", 1.0)),
    ("Guess: Paris\nProbability: 0", ("Paris", 0.0)),
    ("Guess: Paris\nProbability: 85%", ("Paris", 0.85)),
    ("Guess: Paris\nProbability: 85 %", ("Paris", 0.85)),
    ("Guess: Paris Probability: 0.6", ("Paris", 0.6)),  # one line
    ("**Guess:** Washington D.C.\n**Probability:** 0.95", ("Washington D.C.", 0.95)),
    ("Guess: Paris\nProbability: 0.9\nGuess: Lyon\nProbability: 0.1", ("Paris", 0.9)),  # the first of each
    ("Guess: Paris\nProbability: high", None),  # a word
    ("Guess: Paris\nProbability: 85", None),  # a bare number above 1: neither a probability nor marked as %
    ("Guess: Paris\nProbability: 150%", None),  # out of range
    ("Guess: Paris", None),  # no probability
    ("Probability: 0.9", None),  # no guess
    ("Guess:\nProbability: 0.5", None),  # an empty guess
    ("I think it is Paris, with 90% certainty.", None),
    ("", None),
    (None, None),
])
def test_the_parser_reads_numbers_and_percentages_and_nothing_else(reply, parsed):
    assert parse_verbalized(reply) == parsed


@pytest.mark.parametrize("guess, option", [
    ("B", 1), ("B.", 1), ("(B)", 1), ("B) Lyon", 1), ("B: Lyon", 1), ("lyon", 1), ("Lyon.", 1),
    ("A city", -1),  # an article, not a letter
    ("E", -1), ("Marseille", -1)])
def test_a_multiple_choice_guess_names_its_option_by_letter_or_text(guess, option):
    assert guess_option(guess, ["Paris", "Lyon", "Nice", "Brest"]) == option


def _facts_tables(tmp_path):
    data = pd.DataFrame({"item_id": ["c/FR", "c/DE", "c/IT"], "relation": "capital", "subject": ["FR", "DE", "IT"],
                         "prompt": ["The capital of France is", "The capital of Germany is", "The capital of Italy is"],
                         "answer": ["Paris", "Berlin", "Rome"], "aliases": [["Paris"], ["Berlin"], ["Rome"]],
                         "split": "test"})
    write_table(data, tmp_path / "facts.parquet", {"task": "facts"})
    return data


def test_p_true_is_the_true_share_and_correct_is_the_first_passs_answer():
    """Hand-worked: log-probabilities log 0.3 and log 0.1 give P(True) = 0.75."""
    data = pd.DataFrame({"item_id": ["a", "b"], "relation": "capital", "aliases": [["Paris"], ["Rome"]]})
    first = pd.DataFrame({"item_id": ["a", "b"], "answer_text": ["Paris", "Milan"]})
    proposed = proposals("generation", first, data, methods=["seq_prob", "p_true"], match="prefix")
    assert proposed[["proposed", "correct"]].values.tolist() == [["Paris", True], ["Milan", False]]
    judged = pd.DataFrame({"item_id": ["b", "a"], "option_logprobs": [[math.log(0.1), math.log(0.3)],
                                                                       [math.log(0.3), math.log(0.1)]]})
    table = p_true(proposed, judged).set_index("item_id")
    assert table.loc["a", "confidence"] == pytest.approx(0.75) and table.loc["b", "confidence"] == pytest.approx(0.25)
    assert table["correct"].to_dict() == {"a": True, "b": False}


def _plain_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """The continuation's log-probability after the context from one forward pass of the whole sequence."""
    context_ids, continuation_ids = encode_pair(TransformersCodec(tokenizer), context, continuation)
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(logprobs[len(context_ids) + k - 1, t].item() for k, t in enumerate(continuation_ids))


def _second_pass(tmp_path, model_dir, outs, batch_size=2):
    run_inference("generation", tmp_path / "facts.parquet", model_dir, tmp_path / "first.parquet", threads=1,
                  **inference_settings("generation", batch_size=batch_size, max_new_tokens=4, stop=["\n"]))
    task = {"kind": "generation", "data": tmp_path / "facts.parquet", "first_pass": tmp_path / "first.parquet",
            "methods": ["seq_prob", *outs], "match": "prefix", "outs": outs,
            "settings": {"backend": "transformers", "batch_size": batch_size, "add_bos": "auto", "device": "cpu",
                         "dtype": "auto", "max_new_tokens": 6},
            "provenance": {"task": "facts"}}
    self_evaluate_checkpoint(model_dir, [task], threads=1)


def test_the_second_pass_equals_a_plain_computation_item_by_item(tmp_path, chat_model_dir):
    """P(True): each option's log-probability from a forward pass of the whole sequence; verbalized: the
    greedy reply of model.generate on one unpadded prompt at a time."""
    _facts_tables(tmp_path)
    outs = {"p_true": tmp_path / "p_true.parquet", "verbalized": tmp_path / "verbalized.parquet"}
    _second_pass(tmp_path, chat_model_dir, outs)
    model, tokenizer = load_model(chat_model_dir, device="cpu")
    first = read_table(tmp_path / "first.parquet").set_index("item_id")
    data = read_table(tmp_path / "facts.parquet").set_index("item_id")
    judged = read_table(outs["p_true"]).set_index("item_id")
    assert sorted(judged.index) == sorted(data.index)
    for item, row in judged.iterrows():
        prompt = P_TRUE_PROMPT.format(question=data.loc[item, "prompt"], answer=first.loc[item, "answer_text"])
        plain = [_plain_logprob(model, tokenizer, prompt, option) for option in P_TRUE_OPTIONS]
        np.testing.assert_allclose(row["option_logprobs"], plain, atol=1e-4)
    replies = read_table(outs["verbalized"]).set_index("item_id")
    for item, row in replies.iterrows():
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": VERBALIZED_PROMPT.format(question=data.loc[item, "prompt"])}],
            tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            out = model.generate(ids, do_sample=False, max_new_tokens=6, pad_token_id=tokenizer.pad_token_id,
                                 temperature=None, top_p=None, top_k=None)
        new = out[0, ids.shape[1]:].tolist()
        if tokenizer.eos_token_id in new:
            new = new[:max(new.index(tokenizer.eos_token_id), 1)]
        assert row["generated"] == tokenizer.decode(new, skip_special_tokens=True)
    provenance = read_provenance(outs["p_true"])
    assert provenance["stage"] == "self_evaluate" and provenance["prompt"] == P_TRUE_PROMPT


def test_a_model_without_a_chat_template_gets_no_verbalized_rows(tmp_path, tiny_model_dir):
    _facts_tables(tmp_path)
    outs = {"p_true": tmp_path / "p_true.parquet", "verbalized": tmp_path / "verbalized.parquet"}
    _second_pass(tmp_path, tiny_model_dir, outs)
    assert read_table(outs["verbalized"]).empty
    assert read_provenance(outs["verbalized"])["skipped"] == "the model has no chat template"
    extract_confidence("generation", tmp_path / "first.parquet", tmp_path / "facts.parquet", tmp_path / "c.parquet",
                       methods=["seq_prob", "p_true", "verbalized"], self_eval=outs)
    assert set(read_table(tmp_path / "c.parquet")["method"]) == {"seq_prob", "p_true"}


def test_a_rerun_takes_the_finished_second_pass_and_a_changed_prompt_runs_it_again(tmp_path, tiny_model_dir,
                                                                                   monkeypatch, caplog):
    _facts_tables(tmp_path)
    outs = {"p_true": tmp_path / "p_true.parquet"}
    _second_pass(tmp_path, tiny_model_dir, outs)
    before = read_table(outs["p_true"])
    caplog.clear()
    with caplog.at_level("INFO"):
        _second_pass(tmp_path, tiny_model_dir, outs)
    taken = f"{outs['p_true']}: written before with the same model, data, settings and code: taken as it was"
    assert taken in caplog.text
    monkeypatch.setattr(self_eval, "P_TRUE_PROMPT", "Q: {question}\nA: {answer}\nTrue or false?")
    caplog.clear()
    with caplog.at_level("INFO"):
        _second_pass(tmp_path, tiny_model_dir, outs)
    assert taken not in caplog.text
    assert not np.allclose(np.stack(before["option_logprobs"]), np.stack(read_table(outs["p_true"])["option_logprobs"]))


def _verbalized_confidence(tmp_path, replies: list[str]) -> pd.DataFrame:
    """A confidence table of verbalized rows from these replies to the three facts (and seq_prob rows)."""
    _facts_tables(tmp_path)
    first = pd.DataFrame({"item_id": ["c/DE", "c/FR", "c/IT"], "token_ids": [[1], [2], [3]],
                          "token_logprobs": [[-0.1], [-0.2], [-0.3]], "answer_text": ["Berlin", "Lyon", "Rome"],
                          "gold_first_ids": [[1], [9], [3]], "first_text": 0})
    write_table(first, tmp_path / "first.parquet", {"stage": "infer"})
    write_table(pd.DataFrame({"item_id": ["c/DE", "c/FR", "c/IT"], "generated": replies}),
                tmp_path / "verbalized.parquet", {"stage": "self_evaluate"})
    extract_confidence("generation", tmp_path / "first.parquet", tmp_path / "facts.parquet", tmp_path / "c.parquet",
                       methods=["seq_prob", "verbalized"], self_eval={"verbalized": tmp_path / "verbalized.parquet"})
    return read_table(tmp_path / "c.parquet")


def test_unparsed_replies_are_kept_counted_and_never_scored(tmp_path):
    table = _verbalized_confidence(tmp_path, ["Guess: Berlin\nProbability: 0.8", "I do not know.",
                                              "Guess: Milan\nProbability: 60%"])
    verbal = table[table["method"] == "verbalized"].set_index("item_id")
    assert verbal["parsed"].to_dict() == {"c/DE": True, "c/FR": False, "c/IT": True}
    assert verbal["correct"].to_dict() == {"c/DE": True, "c/FR": False, "c/IT": False}
    assert verbal.loc["c/DE", "confidence"] == 0.8 and np.isnan(verbal.loc["c/FR", "confidence"])
    assert table.loc[table["method"] == "seq_prob", "parsed"].all()
    recalibrate(tmp_path / "c.parquet", tmp_path / "facts.parquet", tmp_path / "r.parquet",
                methods=["temperature", "isotonic"], folds=2, seed=0, histogram_bins=2)
    recalibrated = read_table(tmp_path / "r.parquet")
    for recalibration, rows in recalibrated[recalibrated["method"] == "verbalized"].groupby("recalibration"):
        assert sorted(rows["item_id"]) == ["c/DE", "c/FR", "c/IT"], recalibration  # the unparsed row is kept
        assert np.isnan(rows.loc[rows["item_id"] == "c/FR", "confidence"]).all()
    out = {name: tmp_path / f"{name}.parquet" for name in ("summary", "bins", "sweep", "subjects", "curves")}
    score(tmp_path / "r.parquet", *out.values(), task="facts", model="m", revision="main", step=None, epoch=None,
          n_bins=10, n_bootstrap=20, seed=0)
    summary = read_table(out["summary"]).set_index(["method", "recalibration"])
    assert summary.loc[("verbalized", "none"), ["n", "unparsed"]].tolist() == [2, 1]
    assert summary.loc[("verbalized", "none"), "accuracy"] == 0.5
    assert summary.loc[("verbalized", "none"), "mean_confidence"] == pytest.approx(0.7)
    assert summary.loc[("seq_prob", "none"), ["n", "unparsed"]].tolist() == [3, 0]


def test_a_run_whose_replies_all_fail_to_parse_scores_no_item(tmp_path):
    _verbalized_confidence(tmp_path, ["", "no", "maybe"])
    recalibrate(tmp_path / "c.parquet", tmp_path / "facts.parquet", tmp_path / "r.parquet", methods=["platt"],
                folds=2, seed=0, histogram_bins=2)
    out = {name: tmp_path / f"{name}.parquet" for name in ("summary", "bins", "sweep", "subjects", "curves")}
    score(tmp_path / "r.parquet", *out.values(), task="facts", model="m", revision="main", step=None, epoch=None,
          n_bins=10, n_bootstrap=0, seed=0)
    summary = read_table(out["summary"]).set_index(["method", "recalibration"])
    assert summary.loc[("verbalized", "none"), ["n", "unparsed"]].tolist() == [0, 3]
    assert np.isnan(summary.loc[("verbalized", "none"), "ece"])


def test_paired_comparisons_of_verbalized_runs_use_the_items_both_parsed(tmp_path):
    runs = []
    for name, replies in (("a", ["Guess: Berlin\nProbability: 0.8", "?", "Guess: Rome\nProbability: 0.6"]),
                          ("b", ["Guess: Berlin\nProbability: 0.9", "Guess: Paris\nProbability: 0.7", "?"])):
        folder = tmp_path / name
        folder.mkdir()
        _verbalized_confidence(folder, replies)
        recalibrate(folder / "c.parquet", folder / "facts.parquet", folder / "r.parquet", methods=[], folds=2,
                    seed=0, histogram_bins=2)
        runs.append({"task": "facts", "model": name, "revision": "main", "path": folder / "r.parquet"})
    pairs = [{"comparison": "aligned_vs_base", "a": {"model": "a", "revision": "main"},
              "b": {"model": "b", "revision": "main"}}]
    compare(runs, pairs, tmp_path / "comparisons.csv", n_bins=10, n_bootstrap=20, seed=0)
    table = pd.read_csv(tmp_path / "comparisons.csv").set_index("method")
    assert table.loc["verbalized", "n"] == 1  # c/DE only
    assert table.loc["verbalized", "accuracy_a"] == 1.0 and table.loc["verbalized", "accuracy_b"] == 1.0
    assert table.loc["seq_prob", "n"] == 3
