"""Multiple-choice inference: per question the log-probability of every option continuation (" A" ... " D",
or " " + the option text) after its prompt, as lm-evaluation-harness computes it."""
from __future__ import annotations

import logging
import math

import pandas as pd

from ..kinds import MULTIPLE_CHOICE
from .backend import Backend, Codec, InferenceError
from .batches import Batches, Progress
from .schemas import in_table_order

log = logging.getLogger(__name__)


def encode_options(codec: Codec, context: str, continuations: list[str], bos: bool = False
                   ) -> tuple[list[int], list[list[int]]]:
    """Encode as lm-evaluation-harness does: each whole string at once, a continuation's tokens
    being what follows the encoded context (trailing white space of the context moves to the
    continuations); BOS first where ``bos``."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuations = context[:-spaces], [context[-spaces:] + c for c in continuations]
    context_ids, *wholes = codec.encode([context] + [context + c for c in continuations], bos)
    return context_ids, [whole[len(context_ids):] for whole in wholes]


def encode_pair(codec: Codec, context: str, continuation: str, bos: bool = False) -> tuple[list[int], list[int]]:
    """``encode_options`` for one continuation (lm-evaluation-harness's encode_pair)."""
    context_ids, (continuation_ids,) = encode_options(codec, context, [continuation], bos)
    return context_ids, continuation_ids


def shared_prefix(sequences: list[list[int]]) -> list[int]:
    """Longest common token prefix of the sequences, leaving each at least one token after it
    (empty for a single sequence). Being read off the encoded prompts themselves, every prompt's
    whole-string encoding begins with exactly these tokens, whatever BPE merges at the boundary."""
    if len(sequences) < 2:
        return []
    first, n = sequences[0], min(len(s) for s in sequences) - 1
    for s in sequences[1:]:
        n = next((k for k in range(n) if s[k] != first[k]), n)
    return first[:n]


def score_options(backend: Backend, data: pd.DataFrame, *, batch_size: int, bos: bool = False,
                  chat: bool = False, prefix_cache: bool = True) -> pd.DataFrame:
    """Log-probabilities of each option's continuation (the table's ``options``: " A", " B", ... for
    letters, " " + the option text for continuation scoring) after every prompt (in the model's
    chat template where ``chat``): per option the sum over its tokens, its token count and its
    least likely token, and for letters the probability mass the model puts on the option letters.

    The questions of a subject share a prefix (the description and the shots), which the backend
    may compute once for all of them (``prefix_cache``; without it, no question shares a prefix).
    Where every option is one token, one next-token distribution per question reads all options,
    in batches of questions; otherwise the options of a batch of questions are scored after their
    contexts. A prompt and option longer than the model's context keep their last tokens, as in
    the harness (each option then runs as a sequence of its own)."""
    frames = list(iter_option_scores(backend, data, batch_size=batch_size, bos=bos, chat=chat,
                                     prefix_cache=prefix_cache))
    return in_table_order(MULTIPLE_CHOICE, frames, data)


def iter_option_scores(backend: Backend, data: pd.DataFrame, *, batch_size: int, bos: bool = False,
                       chat: bool = False, prefix_cache: bool = True, skip=frozenset(),
                       batches: Batches | None = None):
    """``score_options`` one DataFrame per batch, in the order computed, leaving out the items of
    ``skip`` (done before: the first ones of that order, so the batches are those of a whole run)."""
    items = list(data.itertuples(index=False))
    limit = backend.context_length
    contexts = [backend.chat_prompt(it.prompt) if chat else it.prompt for it in items]
    encoded = [encode_options(backend, context, list(it.options), bos and not chat)
               for context, it in zip(contexts, items)]
    truncated = [len(context) + max(map(len, options)) - 1 > limit for context, options in encoded]
    one_token, several, plain = {}, {}, []  # by subject: one-token options; options of several tokens; truncated
    for i, (context, options) in enumerate(encoded):
        empty = [text for text, option in zip(items[i].options, options) if not option]
        if empty:
            raise InferenceError(f"item {items[i].item_id}: option(s) {empty} add no token after the prompt "
                                 "(the tokenizer merges them into the prompt's last token); cannot score them")
        if any(len(option) > limit for option in options):
            raise InferenceError(f"item {items[i].item_id}: an option is longer than the model's context ({limit})")
        if all(len(option) == 1 for option in options):
            encoded[i] = (context[-limit:], options)  # the harness's (context + option)[-(limit + 1):][:-1]
            one_token.setdefault(items[i].subject, []).append(i)
        elif truncated[i]:
            plain.append(i)  # each option keeps its own last tokens: no shared context
        else:
            several.setdefault(items[i].subject, []).append(i)
    multi_letters = [i for i in [*plain, *(i for group in several.values() for i in group)]
                     if items[i].scoring == "letters"]
    if multi_letters:
        i = multi_letters[0]
        log.warning("%d of %d questions have an option letter of several tokens after the prompt (e.g. %s: %s); "
                    "scoring each option's tokens after the context (no letter_mass)", len(multi_letters), len(items),
                    items[i].item_id, dict(zip(items[i].options, encoded[i][1])))
    batches = batches or Batches(batch_size, backend.out_of_memory)
    progress = Progress("questions", len(items))
    progress.update(sum(it.item_id in skip for it in items))

    def rows(indices, token_logprobs, letter_mass):
        return pd.DataFrame({"item_id": [items[i].item_id for i in indices],
                             "subject": [items[i].subject for i in indices],
                             "option_logprobs": [[math.fsum(t) for t in options] for options in token_logprobs],
                             "option_token_counts": [[len(t) for t in options] for options in token_logprobs],
                             "option_min_logprobs": [[min(t) for t in options] for options in token_logprobs],
                             "letter_mass": letter_mass, "gold": [int(items[i].gold) for i in indices],
                             "truncated": [truncated[i] for i in indices]})

    def todo(groups):
        """Per subject: its prefix (of all its questions, done or not) and the questions not done."""
        for indices in groups.values():
            tokens = shared_prefix([encoded[i][0] for i in indices]) if prefix_cache else []
            yield tokens, [i for i in indices if items[i].item_id not in skip]

    def one_token_rows(tokens, indices):
        """The questions ``indices`` whose options are one token each: all read off one next-token distribution."""
        prefix = backend.prefix(tokens)
        for batch, scores in batches.run(
                indices, key=lambda i: len(encoded[i][0]),
                step=lambda b: backend.next_token_logprobs(prefix, [encoded[i][0][len(tokens):] for i in b],
                                                           [[option[0] for option in encoded[i][1]] for i in b])):
            yield rows(batch, [[[x] for x in logprobs] for logprobs, _ in scores],
                       [mass if items[i].scoring == "letters" else math.nan for i, (_, mass) in zip(batch, scores)])
            progress.update(len(batch))

    def several_token_rows(tokens, indices):
        """The questions ``indices`` with options of several tokens: each option's tokens after the context."""
        prefix = backend.prefix(tokens)
        for batch, logprobs in batches.run(
                indices, key=lambda i: len(encoded[i][0]) + max(map(len, encoded[i][1])),
                step=lambda b: backend.option_logprobs(prefix, [encoded[i] for i in b])):
            yield rows(batch, logprobs, [math.nan] * len(batch))
            progress.update(len(batch))

    for group_rows, groups in ((one_token_rows, one_token), (several_token_rows, several)):
        for tokens, indices in todo(groups):
            if indices:
                yield from group_rows(tokens, indices)
    for i in plain:
        if items[i].item_id not in skip:
            yield rows([i], [[backend.continuation_logprobs(encoded[i][0], option) for option in encoded[i][1]]],
                       [math.nan])
            progress.update(1)
