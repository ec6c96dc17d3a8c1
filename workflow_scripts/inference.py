"""The inference stage: raw token log-probabilities of one checkpoint on one task.

Only this stage runs the model. It stores what every confidence method needs, so that a new
method, another bin count or a new figure never runs the model again:

- ``clm``: per predicted token ``item_id, position, target_id, target_logprob, max_logprob,
  argmax_id`` (documents are cut into windows of the model's context; every token after the
  first of a document is predicted exactly once);
- ``generation``: per fact the greedy continuation up to the stop rule: ``token_ids,
  token_logprobs`` (the answer's tokens), ``generated`` (the raw text), ``answer_text`` (cut at
  the stop rule) and ``gold_first_ids`` (first token of every alias, encoded after the prompt);
- ``multiple_choice``: per question the log-probability of every option continuation
  (``" A"`` ... ``" D"``) after the prompt, as lm-evaluation-harness computes it.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path

import pandas as pd
import torch

from .tables import read_provenance, read_table, write_table

log = logging.getLogger(__name__)

SENTENCE_END = re.compile(r"\.(\s|$)")


class InferenceError(RuntimeError):
    """The model produced numbers that cannot be used (NaN or infinite log-probabilities)."""


def run_inference(kind: str, data_path, checkpoint_dir, out_path, *, batch_size: int = 8,
                  window: int = 1024, max_new_tokens: int = 12, stop: list[str] | None = None,
                  device: str = "auto", dtype: str = "auto", threads: int = 1,
                  provenance: dict | None = None) -> None:
    """Run the checkpoint on the task table and write the raw log-probabilities to ``out_path``."""
    torch.set_num_threads(max(1, threads))
    model, tokenizer = load_model(checkpoint_dir, device=device, dtype=dtype)
    data = read_table(data_path)
    started = time.perf_counter()
    if kind == "clm":
        result = score_tokens(model, tokenizer, data, window=window, batch_size=batch_size)
    elif kind == "generation":
        result = generate_answers(model, tokenizer, data, max_new_tokens=max_new_tokens,
                                  stop=stop if stop is not None else ["\n"], batch_size=batch_size)
    elif kind == "multiple_choice":
        result = score_options(model, tokenizer, data, batch_size=batch_size)
    else:
        raise ValueError(f"unknown task kind {kind!r}")
    log.info("inference done: %d rows in %.1f s", len(result), time.perf_counter() - started)
    checkpoint = Path(checkpoint_dir) / "provenance.json"
    write_table(result, out_path, provenance={
        "stage": "infer", "kind": kind, **(provenance or {}),
        "checkpoint": _read_json(checkpoint), "data": read_provenance(data_path),
        "device": str(model.device), "dtype": str(model.dtype)})


def load_model(checkpoint_dir, *, device: str = "auto", dtype: str = "auto"):
    """Load model and tokenizer; float32 on CPU, bfloat16 on GPU unless ``dtype`` says otherwise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=getattr(torch, dtype))
    model.to(device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# ----------------------------------------------------------------------------- language modelling
def score_tokens(model, tokenizer, data: pd.DataFrame, *, window: int, batch_size: int) -> pd.DataFrame:
    """Per-token log-probabilities over documents cut into windows of ``window`` input tokens."""
    window = min(window, _context_length(model))
    pieces = []  # (item_id, first predicted position, input ids, target ids)
    for item_id, text in zip(data["item_id"], data["text"]):
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        for start in range(0, len(ids) - 1, window):
            chunk = ids[start:start + window + 1]
            pieces.append((item_id, start + 1, chunk[:-1], chunk[1:]))
    columns = {k: [] for k in ("item_id", "position", "target_id", "target_logprob", "max_logprob", "argmax_id")}
    progress = Progress("windows", len(pieces))
    for batch in _batches_by_length(pieces, batch_size, key=lambda p: len(p[2])):
        input_ids, mask = _pad([p[2] for p in batch], tokenizer.pad_token_id, side="right")
        with torch.inference_mode():
            logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device)).logits
        for row, (item_id, first, _, targets) in enumerate(batch):
            n = len(targets)
            logprobs = torch.log_softmax(logits[row, :n].float(), dim=-1)
            _check_finite(logprobs)
            max_lp, argmax = logprobs.max(dim=-1)
            target = torch.tensor(targets, device=logprobs.device)
            columns["item_id"] += [item_id] * n
            columns["position"] += range(first, first + n)
            columns["target_id"] += targets
            columns["target_logprob"] += logprobs.gather(1, target[:, None])[:, 0].tolist()
            columns["max_logprob"] += max_lp.tolist()
            columns["argmax_id"] += argmax.tolist()
        progress.update(len(batch))
    result = pd.DataFrame(columns)
    return result.sort_values(["item_id", "position"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- facts generation
def generate_answers(model, tokenizer, data: pd.DataFrame, *, max_new_tokens: int, stop: list[str],
                     batch_size: int) -> pd.DataFrame:
    """Greedy continuation of every prompt, cut at the first stop string or sentence end."""
    rows = []
    items = list(data.itertuples(index=False))
    progress = Progress("facts", len(items))
    encoded = {it.item_id: tokenizer(it.prompt, add_special_tokens=True)["input_ids"] for it in items}
    for batch in _batches_by_length(items, batch_size, key=lambda it: len(encoded[it.item_id])):
        input_ids, mask = _pad([encoded[it.item_id] for it in batch], tokenizer.pad_token_id, side="left")
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                                 do_sample=False, max_new_tokens=max_new_tokens, output_logits=True,
                                 return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id,
                                 stop_strings=stop or None, tokenizer=tokenizer if stop else None,
                                 temperature=None, top_p=None, top_k=None)
        new_tokens = out.sequences[:, input_ids.shape[1]:]
        logprobs = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1)
        _check_finite(logprobs)
        chosen = logprobs.gather(2, new_tokens[:, :, None])[:, :, 0]
        for row, it in enumerate(batch):
            ids = _until_eos(new_tokens[row].tolist(), tokenizer)
            generated = tokenizer.decode(ids, skip_special_tokens=True)
            answer = cut_answer(generated, stop)
            n = _answer_token_count(tokenizer, ids, answer)
            rows.append({"item_id": it.item_id, "token_ids": ids[:n],
                         "token_logprobs": chosen[row, :n].tolist(), "generated": generated,
                         "answer_text": answer,
                         "gold_first_ids": _first_tokens(tokenizer, encoded[it.item_id], it.prompt, it.aliases)})
        progress.update(len(batch))
    return pd.DataFrame(rows).sort_values("item_id", kind="stable").reset_index(drop=True)


def cut_answer(generated: str, stop: list[str]) -> str:
    """The answer in a continuation: up to the first stop string and the first sentence end."""
    for s in stop:
        if s and s in generated:
            generated = generated[:generated.index(s)]
    match = SENTENCE_END.search(generated)
    return (generated[:match.start()] if match else generated).strip()


def _answer_token_count(tokenizer, ids: list[int], answer: str) -> int:
    """Fewest leading tokens whose text covers the answer (at least one: the first token)."""
    for n in range(1, len(ids) + 1):
        if tokenizer.decode(ids[:n], skip_special_tokens=True).strip().startswith(answer):
            return n
    return max(1, len(ids))


def _until_eos(ids: list[int], tokenizer) -> list[int]:
    """Tokens up to (without) the first end-of-sequence or padding token; at least one token."""
    ends = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    for i, t in enumerate(ids):
        if t in ends:
            return ids[:max(i, 1)]
    return ids


def _first_tokens(tokenizer, context_ids: list[int], prompt: str, aliases) -> list[int]:
    """First token of each alias as the model would write it after the prompt (" " + alias)."""
    firsts = []
    for alias in aliases:
        whole = tokenizer(prompt + " " + alias, add_special_tokens=True)["input_ids"]
        firsts.append(whole[len(context_ids)] if len(whole) > len(context_ids) else -1)
    return sorted(set(firsts))


# ----------------------------------------------------------------------------- multiple choice
def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Encode as lm-evaluation-harness does: the whole string at once, the continuation after the context."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=True)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=True)["input_ids"]
    return context_ids, whole[len(context_ids):]


def score_options(model, tokenizer, data: pd.DataFrame, *, batch_size: int) -> pd.DataFrame:
    """Log-probability of each option continuation " A", " B", ... after every prompt."""
    items = list(data.itertuples(index=False))
    pairs = {it.item_id: [encode_pair(tokenizer, it.prompt, " " + letter) for letter in it.options]
             for it in items}
    single = [it for it in items if _single_token_options(pairs[it.item_id])]
    scores = {}
    progress = Progress("questions", len(items))
    for batch in _batches_by_length(single, batch_size, key=lambda it: len(pairs[it.item_id][0][0])):
        contexts = [pairs[it.item_id][0][0] for it in batch]
        last = _last_logprobs(model, tokenizer, contexts)
        for row, it in enumerate(batch):
            options = [cont[0] for _, cont in pairs[it.item_id]]
            scores[it.item_id] = last[row, options].tolist()
        progress.update(len(batch))
    for it in items:  # options of several tokens: score each whole sequence (rare: logged)
        if it.item_id not in scores:
            log.warning("item %s: an option is not one token after the prompt; scoring options one by one", it.item_id)
            scores[it.item_id] = [_continuation_logprob(model, ctx, cont) for ctx, cont in pairs[it.item_id]]
            progress.update(1)
    return pd.DataFrame({"item_id": [it.item_id for it in items],
                         "subject": [it.subject for it in items],
                         "option_logprobs": [scores[it.item_id] for it in items],
                         "gold": [int(it.gold) for it in items]})


def _single_token_options(pairs) -> bool:
    context = pairs[0][0]
    return all(len(cont) == 1 and ctx == context for ctx, cont in pairs)


def _last_logprobs(model, tokenizer, contexts: list[list[int]]) -> torch.Tensor:
    """Log-softmax of the next-token logits after each context (left-padded, last position only)."""
    input_ids, mask = _pad(contexts, tokenizer.pad_token_id, side="left")
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                       position_ids=position_ids.to(model.device), logits_to_keep=1).logits[:, -1]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    _check_finite(logprobs)
    return logprobs.cpu()


def _continuation_logprob(model, context: list[int], continuation: list[int]) -> float:
    """Sum of log-probabilities of the continuation tokens after the context."""
    ids = torch.tensor([context + continuation], device=model.device)
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    positions = torch.arange(len(context) - 1, len(context) + len(continuation) - 1, device=ids.device)
    value = logprobs[positions, torch.tensor(continuation, device=ids.device)].sum().item()
    if not math.isfinite(value):
        raise InferenceError(f"non-finite log-probability {value} for continuation {continuation}")
    return value


# ----------------------------------------------------------------------------- shared helpers
def _context_length(model) -> int:
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "seq_length"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    return 2048


def _batches_by_length(items: list, batch_size: int, key):
    """Batches of items of similar length (longest first, so an out-of-memory error comes early)."""
    order = sorted(range(len(items)), key=lambda i: -key(items[i]))
    for start in range(0, len(order), batch_size):
        yield [items[i] for i in order[start:start + batch_size]]


def _pad(sequences: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def _check_finite(logprobs: torch.Tensor) -> None:
    """Raise InferenceError when any position has NaN or infinite log-probabilities."""
    bad = torch.isnan(logprobs).any(dim=-1) | ~torch.isfinite(logprobs.amax(dim=-1))
    if bad.any():
        raise InferenceError(f"the model produced NaN or infinite log-probabilities at {int(bad.sum())} "
                             f"of {bad.numel()} positions of a batch; try inference.dtype: float32")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


class Progress:
    """Logs items done of total and the rate, at most every few seconds."""

    def __init__(self, what: str, total: int, every: float = 5.0):
        self.what, self.total, self.every = what, total, every
        self.done, self.start, self.last = 0, time.perf_counter(), 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            log.info("%s %d/%d (%.1f/s)", self.what, self.done, self.total, rate)
