"""The three kinds of task, each declared once: what its task table holds, which task keys shape its
inference, which columns of the first pass's table its confidence methods read, and which column groups
its items. tasks, inference, confidence, metrics and the config schema read a kind's facts here (a test
checks the schema's per-kind keys against ``KINDS``)."""
from __future__ import annotations

from typing import NamedTuple


class Kind(NamedTuple):
    columns: tuple[str, ...]  # the task table (results/data/<task>.parquet)
    settings: tuple[str, ...]  # task keys that shape the kind's inference, besides config `inference`
    raw_columns: tuple[str, ...]  # first-pass columns every confidence method of the kind reads
    data_columns: tuple[str, ...]  # task-table columns every confidence method of the kind reads
    strata: tuple[str, ...]  # the columns that group the kind's items (bootstrap strata); () for none
    self_eval: bool  # whether P(True) and verbalized confidence apply


KINDS = {
    "clm": Kind(
        columns=("item_id", "text", "split"),
        settings=("window", "window_mode"),
        raw_columns=("item_id", "position", "target_id", "max_logprob", "argmax_id"),
        data_columns=(),
        strata=(),
        self_eval=False,
    ),
    "generation": Kind(
        columns=("item_id", "relation", "subject", "prompt", "answer", "aliases", "split"),
        settings=("max_new_tokens", "stop"),
        raw_columns=("item_id", "token_ids", "token_logprobs", "answer_text", "gold_first_ids", "first_text"),
        data_columns=("item_id", "relation", "aliases"),
        strata=("relation",),
        self_eval=True,
    ),
    "multiple_choice": Kind(
        columns=("item_id", "subject", "question", "prompt", "choices", "options", "gold", "scoring", "split"),
        settings=("chat",),
        raw_columns=("item_id", "subject", "option_logprobs", "gold"),
        data_columns=(),
        strata=("subject",),
        self_eval=True,
    ),
}
CLM, GENERATION, MULTIPLE_CHOICE = KINDS  # the kinds' names, for code that branches on one
SCORINGS = ("letters", "continuation")  # how a multiple-choice task scores its options


def kind_of(name: str) -> Kind:
    """The kind called ``name``; a ValueError naming the known ones otherwise."""
    if name not in KINDS:
        raise ValueError(f"unknown task kind {name!r}; known: {', '.join(KINDS)}")
    return KINDS[name]
