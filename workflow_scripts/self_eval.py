"""The second inference pass: the confidence a model states about the answer it gave in the first pass.

- ``p_true`` (Kadavath et al. 2022, "Language Models (Mostly) Know What They Know", section 3): the model
  reads the question and its own answer from the first pass (``confidence.proposals``: the greedy answer of
  a facts task, the top option of a multiple-choice task), is asked whether the answer is true, and the
  options " True" and " False" are scored as two continuations of ``P_TRUE_PROMPT`` (plain text, as in the
  paper). Confidence = P(" True") renormalised over the two; correct = the first pass's answer is right.
- ``verbalized`` (Tian et al. 2023, "Just Ask for Calibration", the prompt "Verb. 1S top-1"): a model with a
  chat template gets ``VERBALIZED_PROMPT`` as its user turn and replies greedily; the confidence stage
  parses the guess and the probability (``confidence.parse_verbalized``). A model without a chat template
  gets an empty table (and its log says so).

The question a prompt shows is the task's own: a facts task's prompt (the sentence to complete), a
multiple-choice question with its options as lines "A. text". Both passes share the first pass's machinery
(``inference.infer_table``) through the same backend (``inference.backend``): batches sorted by length, shards a
killed job resumes from, and a finished table that a rerun with the same prompts, model, settings and code takes
instead of running the model.
"""
from __future__ import annotations

import hashlib
import logging

import pandas as pd

from .confidence import proposals
from .inference import ANSWER_SCHEMA, Backend, infer_table, load_for_tasks, write_row_groups
from .kinds import GENERATION, KINDS, MULTIPLE_CHOICE
from .tables import read_provenance, read_table

log = logging.getLogger(__name__)

P_TRUE_PROMPT = ("Question: {question}\nProposed Answer: {answer}\nIs the proposed answer:\n (A) True\n (B) False\n"
                 "The proposed answer is:")
P_TRUE_OPTIONS = (" True", " False")
VERBALIZED_PROMPT = (
    "Provide your best guess and the probability that it is correct (0.0 to 1.0) for the following question. "
    "Give ONLY the guess and probability, no other words or explanation. For example:\n\n"
    "Guess: <most likely guess, as short as possible; not a complete sentence, just the guess!>\n"
    " Probability: <the probability between 0.0 and 1.0 that your guess is correct, without any extra commentary "
    "whatsoever; just the probability!>\n\nThe question is: {question}")
PROMPTS = {"p_true": P_TRUE_PROMPT, "verbalized": VERBALIZED_PROMPT}
# The settings of a task's second pass.
SECOND_PASS_SETTINGS = ("backend", "batch_size", "add_bos", "device", "dtype", "max_new_tokens")


def questions(kind: str, data: pd.DataFrame) -> pd.Series:
    """The question of every item (by item_id) as the prompts show it: a facts prompt stripped, a
    multiple-choice question stripped and followed by its options as lines "A. text"."""
    from .tasks.prompts import lettered

    if kind == GENERATION:
        texts = [str(prompt).strip() for prompt in data["prompt"]]
    else:
        texts = [f"{str(question).strip()}\n{lettered(choices)}" for question, choices in
                 zip(data["question"], data["choices"])]
    return pd.Series(texts, index=data["item_id"].to_numpy())


def p_true_items(kind: str, data: pd.DataFrame, proposed: pd.DataFrame) -> pd.DataFrame:
    """The P(True) prompts as a multiple-choice table for inference: options " True" and " False", the gold
    option " True" where the proposed answer is right (the confidence stage reads correctness from the first
    pass), grouped by the item's relation or subject (whose prompts share a prefix)."""
    asked = questions(kind, data).loc[proposed["item_id"]].to_numpy()
    stratum = proposed[KINDS[kind].strata[0]].to_numpy()
    return pd.DataFrame({
        "item_id": proposed["item_id"].to_numpy(), "subject": stratum,
        "prompt": [P_TRUE_PROMPT.format(question=q, answer=a) for q, a in zip(asked, proposed["proposed"])],
        "options": [list(P_TRUE_OPTIONS)] * len(proposed), "gold": (~proposed["correct"].astype(bool)).astype(int),
        "scoring": "continuation"})


def verbalized_items(kind: str, data: pd.DataFrame, proposed: pd.DataFrame, backend: Backend) -> pd.DataFrame:
    """The verbalized prompts of the first pass's items as a generation table for inference: each the user
    turn of the model's chat template, then the start of the assistant turn."""
    asked = questions(kind, data).loc[proposed["item_id"]]
    return pd.DataFrame({"item_id": asked.index, "aliases": [[] for _ in range(len(asked))],
                         "prompt": [backend.chat_prompt(VERBALIZED_PROMPT.format(question=q)) for q in asked]})


def _digest(items: pd.DataFrame) -> str:
    return hashlib.sha256(items.to_json(orient="records").encode()).hexdigest()


def self_evaluate_checkpoint(checkpoint_dir, tasks: list[dict], *, threads: int) -> None:
    """Run the second pass of every task on the checkpoint, loaded once.

    A task is a dict: ``kind``; ``data`` (the task table); ``first_pass`` (its inference table);
    ``methods`` (all the task's confidence methods, which fix the multiple-choice proposals) and ``match``
    (the alias rule); ``outs`` (method -> the table to write, for p_true and/or verbalized); ``settings``
    (every one of ``SECOND_PASS_SETTINGS``); and ``provenance``."""
    backend = load_for_tasks(checkpoint_dir, [task["settings"] for task in tasks], threads=threads)
    for task in tasks:
        if sorted(task["settings"]) != sorted(SECOND_PASS_SETTINGS):
            raise ValueError(f"second-pass settings must be {sorted(SECOND_PASS_SETTINGS)}, "
                             f"got {sorted(task['settings'])}")
        data, first_pass = read_table(task["data"]), read_table(task["first_pass"])
        proposed = proposals(task["kind"], first_pass, data, methods=task["methods"], match=task["match"])
        common = {k: task["settings"][k] for k in ("backend", "batch_size", "device", "dtype")}
        for method, out in task["outs"].items():
            provenance = {**task["provenance"], "stage": "self_evaluate", "method": method, "prompt": PROMPTS[method]}
            if method == "p_true":
                kind, items = MULTIPLE_CHOICE, p_true_items(task["kind"], data, proposed)
                settings = {**common, "add_bos": task["settings"]["add_bos"], "chat": False}
            elif method == "verbalized":
                if not backend.has_chat_template:
                    log.warning("%s: the tokenizer has no chat template: no verbalized confidence (an empty %s)",
                                checkpoint_dir, out)
                    skipped = {**provenance, "skipped": "the model has no chat template"}
                    write_row_groups([], out, ANSWER_SCHEMA, skipped)
                    continue
                kind, items = GENERATION, verbalized_items(task["kind"], data, proposed, backend)
                settings = {**common, "add_bos": False, "max_new_tokens": task["settings"]["max_new_tokens"],
                            "stop": []}  # the chat template writes its own special tokens
            else:
                raise ValueError(f"unknown self-evaluation method {method!r}; known: {sorted(PROMPTS)}")
            log.info("%s on %s: %d items", method, task["data"], len(items))
            infer_table(backend, checkpoint_dir, kind, items, out, settings, threads=threads, provenance=provenance,
                        data_digest=_digest(items), data_info={"task": read_provenance(task["data"]),
                                                               "first_pass": read_provenance(task["first_pass"])},
                        source=f"{task['data']} ({method} prompts)")
