"""The confidence stage: turn raw log-probabilities into (confidence, correct) per method.

Each method is a function of one inference table and the task table (methods that take a
``match`` keyword also get the task's alias rule); the registry ``METHODS`` maps a task kind to
its methods. To add a method, write a function here, register it, and list it under the task's
``methods`` in the config: only this stage and the ones after it rerun.
"""
from __future__ import annotations

import inspect
import re
import string

import numpy as np
import pandas as pd

from .tables import read_provenance, read_table, write_table

MATCH_RULES = ("exact", "prefix")
# Columns the methods of each kind read from the inference table and from the task table.
RAW_COLUMNS = {
    "clm": ["item_id", "position", "target_id", "max_logprob", "argmax_id"],
    "generation": ["item_id", "token_ids", "token_logprobs", "answer_text", "gold_first_ids", "first_text"],
    "multiple_choice": ["item_id", "subject", "option_logprobs", "gold"],
}
DATA_COLUMNS = {"clm": [], "generation": ["item_id", "relation", "aliases"], "multiple_choice": []}


def clm_max_prob(raw: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """Per token: confidence = largest next-token probability; correct = argmax is the true token."""
    return pd.DataFrame({"item_id": raw["item_id"], "position": raw["position"],
                         "confidence": np.exp(raw["max_logprob"].to_numpy()),
                         "correct": (raw["argmax_id"] == raw["target_id"]).to_numpy()})


def _task_values(raw: pd.DataFrame, data: pd.DataFrame, column: str) -> np.ndarray:
    """`column` of the task table for each row of the inference table, matched on item_id."""
    values = data.set_index("item_id")[column]
    unknown = raw["item_id"][~raw["item_id"].isin(values.index)]
    if len(unknown):
        raise ValueError(f"{len(unknown)} item_id(s) of the inference table are not in the task table "
                         f"(e.g. {unknown.iloc[0]!r})")
    return values.loc[raw["item_id"]].to_numpy()


def _facts_table(raw: pd.DataFrame, data: pd.DataFrame, confidence, correct) -> pd.DataFrame:
    return pd.DataFrame({"item_id": raw["item_id"], "relation": _task_values(raw, data, "relation"),
                         "confidence": np.asarray(confidence, dtype=np.float64),
                         "correct": np.asarray(correct, dtype=bool)})


def _answer_correct(raw: pd.DataFrame, data: pd.DataFrame, match: str) -> list[bool]:
    aliases = _task_values(raw, data, "aliases")
    return [answer_matches(answer, al, match) for answer, al in zip(raw["answer_text"], aliases)]


def facts_first_token_prob(raw: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """The study's method, on the answer's first token that carries text (index ``first_text``).

    Correct = that token is the first text token of an alias (``gold_first_ids``); confidence = the
    probability of the answer's tokens up to and including it, i.e. that the answer starts with that
    text (a digit-splitting tokenizer writes " 1945" as "▁", "1", ...). A ``first_text`` past the
    answer's tokens stands for its last token.
    """
    confidence, correct = [], []
    for item, ids, logprobs, first, gold in zip(raw["item_id"], raw["token_ids"], raw["token_logprobs"],
                                                raw["first_text"], raw["gold_first_ids"]):
        if len(ids) == 0 or len(ids) != len(logprobs):
            raise ValueError(f"item {item!r}: token_ids and token_logprobs must hold the same number of tokens, "
                             f"at least one; got {len(ids)} and {len(logprobs)}")
        if pd.isna(first) or first < 0:
            raise ValueError(f"item {item!r}: first_text must be a token index >= 0, got {first!r}")
        last = min(int(first), len(ids) - 1)
        confidence.append(np.exp(np.sum(logprobs[:last + 1])))
        correct.append(ids[last] in set(gold))
    return _facts_table(raw, data, confidence, correct)


def facts_seq_prob(raw: pd.DataFrame, data: pd.DataFrame, *, match: str) -> pd.DataFrame:
    """Probability of the whole generated answer; correct = the answer matches an alias (``match`` rule)."""
    confidence = [np.exp(np.sum(lps)) for lps in raw["token_logprobs"]]
    return _facts_table(raw, data, confidence, _answer_correct(raw, data, match))


def facts_mean_token_prob(raw: pd.DataFrame, data: pd.DataFrame, *, match: str) -> pd.DataFrame:
    """Mean probability of the answer's tokens; correct = the answer matches an alias (``match`` rule)."""
    confidence = [np.mean(np.exp(lps)) for lps in raw["token_logprobs"]]
    return _facts_table(raw, data, confidence, _answer_correct(raw, data, match))


def mc_option_softmax(raw: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """Softmax over the option log-probabilities; confidence = top option's share, correct = it is gold.

    Keeps every option's probability (``option_probs``) and the ``gold`` index for the multi-class Brier score.
    """
    logprobs = np.stack(raw["option_logprobs"].to_numpy())
    probs = np.exp(logprobs - logprobs.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    gold = raw["gold"].to_numpy(dtype=np.int64)
    return pd.DataFrame({"item_id": raw["item_id"], "subject": raw["subject"],
                         "confidence": probs.max(axis=1), "correct": probs.argmax(axis=1) == gold,
                         "option_probs": list(probs), "gold": gold})


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


def _check_match(match: str) -> None:
    if match not in MATCH_RULES:
        raise ValueError(f"match must be one of {list(MATCH_RULES)}, got {match!r}")


def answer_matches(answer: str, aliases, match: str) -> bool:
    """Whether the normalised answer equals a normalised alias, or (``prefix``, not ``exact``) starts
    with one followed by a space and more words."""
    _check_match(match)
    got = normalize_answer(answer)
    for alias in aliases:
        want = normalize_answer(alias)
        if want and (got == want or (match == "prefix" and got.startswith(want + " "))):
            return True
    return False


def extract_confidence(kind: str, inference_path, data_path, out_path, *, methods: list[str],
                       match: str = "prefix") -> None:
    """Apply each configured method to one inference table; write ``item_id, method, confidence, correct``
    and the methods' other columns. Methods taking a ``match`` keyword get the alias rule."""
    known = METHODS.get(kind, {})
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"unknown confidence method(s) {unknown} for task kind {kind!r}; known: {sorted(known)}")
    _check_match(match)
    raw, data = read_table(inference_path), read_table(data_path)
    for path, table, columns in ((inference_path, raw, RAW_COLUMNS[kind]), (data_path, data, DATA_COLUMNS[kind])):
        missing = [column for column in columns if column not in table.columns]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} (needed by the {kind} confidence methods)")
    frames = []
    for method in methods:
        function = known[method]
        options = {"match": match} if "match" in inspect.signature(function).parameters else {}
        try:
            table = function(raw, data, **options)
        except ValueError as error:
            raise ValueError(f"{inference_path}, method {method!r}: {error}") from error
        table.insert(1, "method", method)
        frames.append(table)
    result = pd.concat(frames, ignore_index=True)
    first = ["item_id", "method", "confidence", "correct"]
    result = result[first + [c for c in result.columns if c not in first]]
    write_table(result, out_path, provenance={"stage": "extract_confidence", "kind": kind, "methods": methods,
                                              "match": match, "inference": read_provenance(inference_path)})
