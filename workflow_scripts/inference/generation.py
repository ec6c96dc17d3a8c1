"""Facts generation: per fact the greedy continuation of its prompt up to the stop rule, the answer cut from
it, and the first token carrying text of every alias."""
from __future__ import annotations

import re

import pandas as pd

from ..kinds import GENERATION
from .backend import Backend, Codec
from .batches import Batches, Progress
from .schemas import ANSWER_SCHEMA, in_table_order

# A sentence ends at a full stop followed by white space or the end, unless the stop ends an
# initial ("D.C.", "J. R.") or one of these abbreviations ("St. John's", "Mt. Kenya", "Acme Inc. of").
ABBREVIATIONS = ("St", "Ste", "Mt", "Ft", "Pt", "Dr", "Mr", "Mrs", "Ms", "Prof", "Gen", "Col", "Capt", "Lt", "Sgt",
                 "Rev", "Jr", "Sr", "Co", "Corp", "Inc", "Ltd", "Bros", "No", "vs", "Ave", "Blvd", "Rd", "approx")
FULL_STOP = re.compile(r"(\S*)\.(?:\s|$)")  # a full stop ending the run of text before it


def generate_answers(backend: Backend, data: pd.DataFrame, *, max_new_tokens: int, stop: list[str],
                     batch_size: int, bos: bool = False) -> pd.DataFrame:
    """Greedy continuation of every prompt (batched), each row stopping at its own stop string or end of
    sequence, cut at the first stop string or sentence end. A prompt longer than the model's context less
    ``max_new_tokens`` keeps its last tokens."""
    frames = list(iter_answers(backend, data, max_new_tokens=max_new_tokens, stop=stop, batch_size=batch_size,
                               bos=bos))
    return in_table_order(GENERATION, frames, data)


def iter_answers(backend: Backend, data: pd.DataFrame, *, max_new_tokens: int, stop: list[str], batch_size: int,
                 bos: bool = False, skip=frozenset(), batches: Batches | None = None):
    """``generate_answers`` one DataFrame per batch, in the order computed, leaving out the items
    of ``skip`` (done before: the first ones of that order, so the batches are those of a whole run)."""
    items = list(data.itertuples(index=False))
    room = backend.context_length - max_new_tokens
    if room < 1:
        raise ValueError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's context "
                         f"({backend.context_length} tokens)")
    progress = Progress("facts", len(items))
    progress.update(sum(it.item_id in skip for it in items))
    encoded = {it.item_id: backend.encode([it.prompt], bos)[0] for it in items}
    batches = batches or Batches(batch_size, backend.out_of_memory)
    for batch, answers in batches.run(
            [it for it in items if it.item_id not in skip], key=lambda it: min(room, len(encoded[it.item_id])),
            step=lambda b: backend.generate([encoded[it.item_id][-room:] for it in b], max_new_tokens, stop)):
        rows = []
        for it, (ids, logprobs) in zip(batch, answers):
            generated = backend.decode(ids)
            answer = cut_answer(generated, stop)
            first = first_text_token(backend, ids)
            n = max(_answer_token_count(backend, ids, answer), min(first + 1, len(ids)))
            rows.append({"item_id": it.item_id, "token_ids": ids[:n], "token_logprobs": logprobs[:n],
                         "generated": generated, "answer_text": answer,
                         "gold_first_ids": _first_tokens(backend, encoded[it.item_id], it.prompt, it.aliases, bos),
                         "first_text": first, "truncated": len(encoded[it.item_id]) > room})
        progress.update(len(batch))
        yield pd.DataFrame(rows, columns=ANSWER_SCHEMA.names)


def cut_answer(generated: str, stop: list[str]) -> str:
    """The answer in a continuation: up to the first stop string and the end of its first sentence."""
    for s in stop:
        if s and s in generated:
            generated = generated[:generated.index(s)]
    return generated[:sentence_end(generated)].strip()


def sentence_end(text: str) -> int:
    """Where the first sentence of ``text`` ends: at its first full stop followed by white space or
    the end, leaving out stops that end an initial or one of ``ABBREVIATIONS``; ``len(text)`` if none."""
    for match in FULL_STOP.finditer(text):
        before = match.group(1).rstrip(".")
        word = re.split(r"[.(\"]", before)[-1]
        if len(word) != 1 and word not in ABBREVIATIONS and word.lower() not in ABBREVIATIONS:
            return match.start() + len(before)
    return len(text)


def _answer_token_count(codec: Codec, ids: list[int], answer: str) -> int:
    """Fewest leading tokens whose text covers the answer (at least one: the first token)."""
    for n in range(1, len(ids) + 1):
        if codec.decode(ids[:n]).strip().startswith(answer):
            return n
    return max(1, len(ids))


def first_text_token(codec: Codec, ids: list[int]) -> int:
    """Index of the first token that carries text (not only white space, as a bare "▁" before the
    digits of a number in LLaMA's tokenizer); 0 where none does."""
    return next((i for i, t in enumerate(ids) if codec.decode([t]).strip()), 0)


def _first_tokens(codec: Codec, context_ids: list[int], prompt: str, aliases, bos: bool) -> list[int]:
    """First token carrying text of each alias as the model would write it after the prompt (" " + alias)."""
    firsts = []
    for alias in aliases:
        rest = codec.encode([prompt + " " + alias], bos)[0][len(context_ids):]
        firsts.append(rest[first_text_token(codec, rest)] if rest else -1)
    return sorted(set(firsts))
