"""The confidence stage: turn raw log-probabilities into (confidence, correct) per method.

Each method is a function of one inference table; the registry ``METHODS`` maps a task kind to
its methods. To add a method, write a function here, register it, and list it under the task's
``methods`` in the config: only this stage and the ones after it rerun.
"""
from __future__ import annotations

import re
import string

import numpy as np
import pandas as pd

from .tables import read_provenance, read_table, write_table


def clm_max_prob(raw: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """Per token: confidence = largest next-token probability; correct = argmax is the true token."""
    return pd.DataFrame({"item_id": raw["item_id"], "position": raw["position"],
                         "confidence": np.exp(raw["max_logprob"].to_numpy()),
                         "correct": (raw["argmax_id"] == raw["target_id"]).to_numpy()})


def _answer_correct(raw: pd.DataFrame, data: pd.DataFrame) -> np.ndarray:
    aliases = data.set_index("item_id")["aliases"].loc[raw["item_id"]]
    return np.array([answer_matches(a, al) for a, al in zip(raw["answer_text"], aliases)], dtype=bool)


def facts_first_token_prob(raw: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """The study's method: probability of the first generated token; correct = it starts the gold object."""
    confidence = np.exp([lps[0] for lps in raw["token_logprobs"]])
    correct = [ids[0] in set(gold) for ids, gold in zip(raw["token_ids"], raw["gold_first_ids"])]
    return pd.DataFrame({"item_id": raw["item_id"], "confidence": confidence, "correct": np.array(correct, dtype=bool)})


def facts_seq_prob(raw: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """Probability of the whole generated answer; correct = the answer matches an alias."""
    confidence = np.exp([float(np.sum(lps)) for lps in raw["token_logprobs"]])
    return pd.DataFrame({"item_id": raw["item_id"], "confidence": confidence,
                         "correct": _answer_correct(raw, data)})


def facts_mean_token_prob(raw: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """Mean probability of the answer's tokens; correct = the answer matches an alias."""
    confidence = [float(np.mean(np.exp(lps))) for lps in raw["token_logprobs"]]
    return pd.DataFrame({"item_id": raw["item_id"], "confidence": confidence,
                         "correct": _answer_correct(raw, data)})


def mc_option_softmax(raw: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """Softmax over the option log-probabilities; confidence = top option's share, correct = it is gold."""
    logprobs = np.stack(raw["option_logprobs"].to_numpy())
    probs = np.exp(logprobs - logprobs.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    choice = probs.argmax(axis=1)
    return pd.DataFrame({"item_id": raw["item_id"], "subject": raw["subject"],
                         "confidence": probs.max(axis=1), "correct": choice == raw["gold"].to_numpy()})


METHODS = {
    "clm": {"max_prob": clm_max_prob},
    "generation": {"first_token_prob": facts_first_token_prob, "seq_prob": facts_seq_prob,
                   "mean_token_prob": facts_mean_token_prob},
    "multiple_choice": {"option_softmax": mc_option_softmax},
}


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and articles, collapse white space (SQuAD's normalisation)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def answer_matches(answer: str, aliases) -> bool:
    """True when the normalised answer is an alias or starts with one followed by more words."""
    got = normalize_answer(answer)
    for alias in aliases:
        want = normalize_answer(alias)
        if want and (got == want or got.startswith(want + " ")):
            return True
    return False


def extract_confidence(kind: str, inference_path, data_path, out_path, *, methods: list[str]) -> None:
    """Apply each configured method to one inference table; write ``item_id, method, confidence, correct``."""
    known = METHODS.get(kind, {})
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"unknown confidence method(s) {unknown} for task kind {kind!r}; known: {sorted(known)}")
    raw, data = read_table(inference_path), read_table(data_path)
    frames = []
    for method in methods:
        table = known[method](raw, data)
        table.insert(1, "method", method)
        frames.append(table)
    result = pd.concat(frames, ignore_index=True)
    first = ["item_id", "method", "confidence", "correct"]
    result = result[first + [c for c in result.columns if c not in first]]
    write_table(result, out_path, provenance={"stage": "extract_confidence", "kind": kind, "methods": methods,
                                              "inference": read_provenance(inference_path)})
