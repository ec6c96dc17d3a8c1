"""CLM inference: per predicted token of every document its log-probability, the largest one, its token,
the entropy and the context it was predicted from, in windows of at most the model's context."""
from __future__ import annotations

from itertools import islice

import numpy as np
import pandas as pd

from .backend import Backend, Window
from .batches import Batches, Progress
from .schemas import TOKEN_SCHEMA

BATCHES_PER_ROW_GROUP = 16  # CLM windows per Parquet row group = this x batch size


def score_tokens(backend: Backend, data: pd.DataFrame, *, window: int, batch_size: int,
                 window_mode: str | dict = "rolling") -> pd.DataFrame:
    """Per-token statistics of all documents in one table (``iter_token_scores`` in memory)."""
    frames = list(iter_token_scores(backend, data, window=window, window_mode=window_mode, batch_size=batch_size))
    return pd.concat(frames, ignore_index=True) if frames else TOKEN_SCHEMA.empty_table().to_pandas()


def iter_token_scores(backend: Backend, data: pd.DataFrame, *, window: int, batch_size: int,
                      window_mode: str | dict = "rolling", skip_groups: int = 0, batches: Batches | None = None):
    """Per-token statistics of every token of every document, in windows of at most ``window``
    input tokens (capped by the model's context) laid out as ``window_mode`` says (see ``document_windows``).

    Yields one DataFrame per group of ``batch_size x BATCHES_PER_ROW_GROUP`` windows, in document
    order, so that memory is bounded by the window and the batch size, never by the corpus; the
    first ``skip_groups`` groups are skipped (already done)."""
    window = min(window, backend.context_length)
    batches = batches or Batches(batch_size, backend.out_of_memory)
    progress = Progress("documents", len(data))
    prefix = backend.prefix_token
    windows = (w for item_id, text in zip(data["item_id"], data["text"])
               for w in document_windows(item_id, backend.encode([text], bos=False)[0], prefix, window, window_mode))
    for _ in range(skip_groups):
        progress.update(sum(w.ends_document for w in islice(windows, batch_size * BATCHES_PER_ROW_GROUP)))
    while group := list(islice(windows, batch_size * BATCHES_PER_ROW_GROUP)):
        stats = {}
        for batch, batch_stats in batches.run(range(len(group)), key=lambda i: len(group[i].inputs),
                                              step=lambda b: backend.window_statistics([group[i] for i in b])):
            stats.update(zip(batch, batch_stats))
            progress.update(sum(group[i].ends_document for i in batch))
        yield pd.DataFrame({
            "item_id": [w.item_id for w in group for _ in w.targets],
            "position": [p for w in group for p in range(w.first, w.first + len(w.targets))],
            "target_id": [t for w in group for t in w.targets],
            **{name: np.concatenate([stats[i][k] for i in range(len(group))])
               for k, name in enumerate(("target_logprob", "max_logprob", "argmax_id", "entropy"))},
            "context_len": [c for w in group
                            for c in range(len(w.inputs) - len(w.targets) + 1, len(w.inputs) + 1)]})


def document_windows(item_id: str, tokens: list[int], prefix: int, window: int, window_mode: str | dict = "rolling"):
    """The windows of one document's ``tokens``, each predicted exactly once, the first from ``prefix``.

    ``rolling`` is lm-evaluation-harness's ``loglikelihood_rolling`` (``get_rolling_token_windows``
    with a context of one token): the first window is ``prefix`` + the first ``window - 1`` tokens
    and predicts the first ``window`` tokens; each next window predicts the next ``window`` tokens
    from the ``window`` tokens before each, so the last one reaches back a full window.
    ``{"stride": N}`` is the sliding window of the transformers perplexity guide over ``prefix`` +
    tokens: windows of ``window`` input tokens start every N tokens, each scoring the tokens the
    windows before it have not (at least ``window - N`` tokens of context past the first window)."""
    n = len(tokens)
    if window_mode == "rolling":
        if not n:
            return
        first = min(window, n)
        yield Window(item_id, 0, [prefix, *tokens[:first - 1]], tokens[:first], first == n)
        done = first
        while done < n:
            end = min(done + window, n)
            yield Window(item_id, done, tokens[end - window - 1:end - 1], tokens[done:end], end == n)
            done = end
        return
    if not (isinstance(window_mode, dict) and set(window_mode) == {"stride"}):
        raise ValueError(f"window_mode must be 'rolling' or {{'stride': N}}, got {window_mode!r}")
    stride = window_mode["stride"]
    if not 1 <= stride <= window:
        raise ValueError(f"window_mode stride {stride} must be between 1 and the window ({window} tokens)")
    sequence, done, begin = [prefix, *tokens], 0, 0
    while done < n:
        end = min(begin + window, n)  # inputs sequence[begin:end] predict tokens[begin:end]
        yield Window(item_id, done, sequence[begin:end], tokens[done:end], end == n)
        done, begin = end, begin + stride
