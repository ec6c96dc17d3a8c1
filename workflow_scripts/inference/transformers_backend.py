"""The transformers backend: a causal LM of the Hugging Face hub format and its tokenizer, run with torch.

- CLM statistics are reduced on the device, a chunk of positions at a time, through the model's own output
  head (``output_logits``: soft-capping, logit scales, checked against the model's forward once per backend);
- options after a prompt continue the key/value cache of the prompts' shared prefix: one forward pass per
  batch of questions where every option is one token, else the question's context once and its options as
  one batch continuing the context's cache (a short prefix: every context + option as a sequence of its own);
- generation is ``model.generate``, greedy, batched and left-padded, each row stopping at its own stop string.

Tokens are encoded as lm-evaluation-harness's HF backend encodes them (``TransformersCodec``,
``resolve_add_bos``, ``context_length``).
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import torch

from .backend import InferenceError, Window

LOGITS_PER_CHUNK = 2 ** 22  # logits materialised at once by the CLM statistics (16 MiB in float32)
# Options of several tokens after a subject's shared prefix of fewer tokens than this (P(True) prompts, zero-shot
# questions) run as whole sequences, a batch of questions at a time, rather than continuing a cache one question
# at a time.
SHARED_PREFIX_MIN = 32


def load_model(checkpoint_dir, *, device: str = "auto", dtype: str = "auto"):
    """Load model and tokenizer; float32 on CPU, bfloat16 on GPU unless ``dtype`` says otherwise. The checkpoint's
    own code runs only where its fetch recorded ``trust_remote_code`` (``checkpoint_trusts_remote_code``). Padding
    is the end-of-sequence token where the tokenizer has no padding token; InferenceError where it has neither."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    trust = checkpoint_trusts_remote_code(checkpoint_dir)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir, trust_remote_code=trust)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise InferenceError(f"checkpoint {checkpoint_dir}: the tokenizer has neither a padding token nor an "
                                 "end-of-sequence token to pad batches with; set pad_token in its "
                                 "tokenizer_config.json")
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=getattr(torch, dtype), trust_remote_code=trust)
    model.to(device).eval()
    return model, tokenizer


def checkpoint_trusts_remote_code(checkpoint_dir) -> bool:
    """Whether the checkpoint's code of its own may run: ``trust_remote_code`` in the ``provenance.json`` its fetch
    wrote (``sources.fetch_checkpoint``, from ``models.<name>.trust_remote_code``); false for any other folder."""
    record = Path(checkpoint_dir) / "provenance.json"
    return bool(record.is_file() and json.loads(record.read_text()).get("trust_remote_code", False))


class TransformersCodec:
    """A transformers tokenizer as the backends' ``Codec``."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def encode(self, texts: list[str], bos: bool) -> list[list[int]]:
        first = [self.tokenizer.bos_token_id] if bos else []
        return [first + ids for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class SharedPrefix:
    """The tokens that a run of contexts begins with, and the keys and values of every layer after them
    (batch of one), computed on first use; none for no token."""

    def __init__(self, tokens: list[int]):
        self.tokens = tokens
        self._layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def layers(self, model) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._layers is None:
            self._layers = _prefix_cache(model, self.tokens)
        return self._layers


class TransformersBackend(TransformersCodec):
    """A causal LM and its tokenizer (``load_model``) as an inference ``Backend``; ``logits_chunk`` positions
    at a time go through the output head in CLM statistics (default: as many as fit ``LOGITS_PER_CHUNK``)."""

    def __init__(self, model, tokenizer, *, logits_chunk: int | None = None):
        super().__init__(tokenizer)
        self.model = model
        self.logits_chunk = logits_chunk or max(1, LOGITS_PER_CHUNK // model.get_output_embeddings().weight.shape[0])
        self._head_checked = False

    @classmethod
    def load(cls, checkpoint_dir, *, device: str, dtype: str, threads: int) -> TransformersBackend:
        """The checkpoint on ``device`` in ``dtype`` (``load_model``), with ``threads`` CPU threads."""
        torch.set_num_threads(max(1, threads))
        return cls(*load_model(checkpoint_dir, device=device, dtype=dtype))

    @property
    def device(self) -> str:
        return str(self.model.device)

    @property
    def dtype(self) -> str:
        return str(self.model.dtype)

    @property
    def num_parameters(self) -> int:
        return self.model.num_parameters()

    @property
    def context_length(self) -> int:
        return context_length(self.model, self.tokenizer)

    @property
    def prefix_token(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def resolve_add_bos(self, add_bos: str | bool) -> bool:
        return resolve_add_bos(self.tokenizer, add_bos)

    def chat_prompt(self, prompt: str) -> str:
        if not self.has_chat_template:
            raise ValueError("chat: true, but the tokenizer has no chat template")
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True)

    def out_of_memory(self, error: BaseException) -> bool:
        return out_of_memory(error)

    def window_statistics(self, windows: list[Window]) -> list[tuple[np.ndarray, ...]]:
        if not self._head_checked:
            check_output_head(self.model)
            self._head_checked = True
        stats = _window_stats(self.model, self.model.get_output_embeddings(), windows, self.tokenizer.pad_token_id,
                              self.logits_chunk)
        return [tuple(column.numpy() for column in window) for window in stats]

    def generate(self, contexts: list[list[int]], max_new_tokens: int, stop: list[str]) -> list[tuple[list[int],
                                                                                                   list[float]]]:
        new_tokens, chosen = _greedy(self.model, self.tokenizer, contexts, max_new_tokens, stop)
        answers = []
        for row in range(len(contexts)):
            ids = _until_eos(new_tokens[row].tolist(), self.tokenizer)
            answers.append((ids, chosen[row, :len(ids)].tolist()))
        return answers

    def prefix(self, tokens: list[int]) -> SharedPrefix:
        return SharedPrefix(tokens)

    def next_token_logprobs(self, prefix: SharedPrefix, suffixes: list[list[int]], candidates: list[list[int]]
                            ) -> list[tuple[list[float], float]]:
        logprobs = _next_token_logprobs(self.model, prefix.layers(self.model), len(prefix.tokens), suffixes,
                                        self.tokenizer.pad_token_id)
        return [(logprobs[row, ids].tolist(), logprobs[row, sorted(set(ids))].exp().sum().item())
                for row, ids in enumerate(candidates)]

    def option_logprobs(self, prefix: SharedPrefix, questions: list[tuple[list[int], list[list[int]]]]
                        ) -> list[list[list[float]]]:
        if len(prefix.tokens) < SHARED_PREFIX_MIN:
            return _batched_option_logprobs(self.model, questions, self.tokenizer.pad_token_id)
        result = []
        for context, options in questions:  # the context once, then every option as its continuation
            context_cache, first = _context_cache(self.model, prefix.layers(self.model), len(prefix.tokens),
                                                  context[len(prefix.tokens):])
            result.append(_option_token_logprobs(self.model, context_cache, len(context), first, options,
                                                 self.tokenizer.pad_token_id))
        return result

    def continuation_logprobs(self, context: list[int], continuation: list[int]) -> list[float]:
        return _continuation_token_logprobs(self.model, context, continuation, self.context_length)


# ----------------------------------------------------------------------------- tokens
def context_length(model, tokenizer) -> int:
    """The model's context in tokens, found as lm-evaluation-harness's ``resolve_max_length`` does:
    the (text) config's ``n_positions``, ``max_position_embeddings`` or ``n_ctx``, else the
    tokenizer's ``model_max_length`` where set, else 2048."""
    config = getattr(model.config, "text_config", None) or model.config
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(config, key, None) is not None:
            return int(getattr(config, key))
    unset = int(1e30)  # transformers' VERY_LARGE_INTEGER: no length given
    return int(tokenizer.model_max_length) if getattr(tokenizer, "model_max_length", unset) < unset else 2048


def resolve_add_bos(tokenizer, add_bos: str | bool = "auto") -> bool:
    """Whether prompts begin with the BOS token: ``auto`` where the tokenizer prepends it by default
    (what lm-evaluation-harness's HF backend does unless told), ``True`` always, ``False`` never."""
    bos = tokenizer.bos_token_id
    if add_bos == "auto":
        return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos] \
            and tokenizer("a", add_special_tokens=False)["input_ids"][:1] != [bos]
    if add_bos not in (True, False):
        raise ValueError(f"add_bos must be auto, true or false, got {add_bos!r}")
    if add_bos and bos is None:
        raise ValueError("add_bos is true but the tokenizer has no beginning-of-sequence token")
    return add_bos


def out_of_memory(error: BaseException) -> bool:
    """An accelerator's out-of-memory error, or the CPU allocator's."""
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


# ----------------------------------------------------------------------------- language modelling
def _window_stats(model, head, windows: list[Window], pad_id: int, logits_chunk: int) -> list[tuple]:
    """Per window: (target log-prob, max log-prob, argmax id, entropy) of each target.

    The final hidden states at the scored positions of the batch go through the output head
    ``logits_chunk`` positions at a time, so the full logits of the batch never exist at once."""
    input_ids, mask = _pad([w.inputs for w in windows], pad_id, side="right")
    scored = torch.zeros_like(mask, dtype=torch.bool)
    for row, w in enumerate(windows):
        scored[row, len(w.inputs) - len(w.targets):len(w.inputs)] = True
    targets = torch.tensor([t for w in windows for t in w.targets], device=model.device)
    with torch.inference_mode():
        hidden = model.base_model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                                  use_cache=False).last_hidden_state
        hidden = hidden[scored.to(model.device)]  # scored positions, row after row
        chunks = [_logit_stats(output_logits(model, head, hidden[s:s + logits_chunk]), targets[s:s + logits_chunk])
                  for s in range(0, len(hidden), logits_chunk)]
    columns = [torch.cat(column).cpu() for column in zip(*chunks)]
    sizes = [len(w.targets) for w in windows]
    return list(zip(*(column.split(sizes) for column in columns)))


def output_logits(model, head, hidden: torch.Tensor) -> torch.Tensor:
    """The logits the model's own forward computes from final hidden states: the output layer,
    then what some families apply after it (Gemma 2/3 ``final_logit_softcapping``, Cohere
    ``logit_scale``, Granite ``logits_scaling``); ``check_output_head`` checks it per model."""
    logits = head(hidden)
    config = model.config
    if getattr(config, "final_logit_softcapping", None) is not None:
        logits = torch.tanh(logits / config.final_logit_softcapping) * config.final_logit_softcapping
    if getattr(config, "logit_scale", None) is not None:
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None) is not None:
        logits = logits / config.logits_scaling
    return logits


def check_output_head(model) -> None:
    """InferenceError unless ``output_logits`` gives the logits of the model's own forward on a probe."""
    probe = torch.arange(8, device=model.device)[None] % model.config.vocab_size
    with torch.inference_mode():
        expected = model(input_ids=probe, use_cache=False).logits[0].float()
        hidden = model.base_model(input_ids=probe, use_cache=False).last_hidden_state[0]
        got = output_logits(model, model.get_output_embeddings(), hidden).float()
    if not torch.isfinite(expected).all():
        return  # NaN weights: the statistics report them
    tolerance = 1e-3 if model.dtype == torch.float32 else 5e-2
    difference = (got - expected).abs().max().item() / max(1.0, expected.abs().max().item())
    if not difference <= tolerance:
        raise InferenceError(f"{type(model).__name__} computes logits after its output layer in "
                             f"a way CLM inference does not reproduce (relative difference {difference:.2g}); "
                             f"add it to {__name__}.output_logits")


def _logit_stats(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Log-probability of the target, largest log-probability, its token and the entropy (nats).

    Works in place on the (float32) logits: one vocabulary-sized tensor per position, no more."""
    logits = logits.float()
    max_logit, argmax = logits.max(dim=-1)
    target = logits.gather(1, targets[:, None])[:, 0]
    probs = logits.sub_(max_logit[:, None]).exp_()
    total = probs.sum(dim=-1)
    lse = _check_finite(max_logit + total.log())
    entropy = torch.special.entr(probs.div_(total[:, None]), out=probs).sum(dim=-1)
    return (target - lse).double(), (max_logit - lse).double(), argmax, entropy.double()


# ----------------------------------------------------------------------------- generation
def _greedy(model, tokenizer, contexts: list[list[int]], max_new_tokens: int, stop: list[str]):
    """New tokens of the greedy continuations (rows that stopped are padded) and their log-probabilities."""
    input_ids, mask = _pad(contexts, tokenizer.pad_token_id, side="left")
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                             do_sample=False, max_new_tokens=max_new_tokens, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id,
                             stop_strings=stop or None, tokenizer=tokenizer if stop else None,
                             temperature=None, top_p=None, top_k=None)
        new_tokens = out.sequences[:, input_ids.shape[1]:]
        logits = torch.stack(out.logits, dim=1).float()
        chosen = logits.gather(2, new_tokens[:, :, None])[:, :, 0] - _log_normaliser(logits)
    return new_tokens.cpu(), chosen.cpu()


def _until_eos(ids: list[int], tokenizer) -> list[int]:
    """Tokens up to (without) the first end-of-sequence or padding token; at least one token."""
    ends = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    for i, t in enumerate(ids):
        if t in ends:
            return ids[:max(i, 1)]
    return ids


# ----------------------------------------------------------------------------- options
def _prefix_cache(model, prefix: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values of every layer after the prefix (batch of one); empty for no prefix."""
    if not prefix:
        return []
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        model(input_ids=torch.tensor([prefix], device=model.device), use_cache=True, logits_to_keep=1,
              **{_cache_argument(model): cache})
    return [(keys, values) for keys, values, *_ in cache]


def _next_token_logprobs(model, prefix_cache: list, prefix_length: int, suffixes: list[list[int]],
                         pad_id: int) -> torch.Tensor:
    """Log-softmax of the next-token logits after prefix + each suffix (left-padded suffixes that
    continue the prefix's cache; only the last position goes through the output layer)."""
    input_ids, mask = _pad(suffixes, pad_id, side="left")
    position_ids = prefix_length + (mask.cumsum(-1) - 1).clamp(min=0)
    mask = torch.cat([torch.ones(len(suffixes), prefix_length, dtype=mask.dtype), mask], dim=1)
    kwargs = {"use_cache": False}
    if prefix_cache:
        kwargs = {_cache_argument(model): _loaded_cache(model, prefix_cache, len(suffixes)), "use_cache": True}
    with torch.inference_mode():
        logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                       position_ids=position_ids.to(model.device), logits_to_keep=1, **kwargs).logits[:, -1]
        logits = logits.float()
        logprobs = logits - _log_normaliser(logits)[:, None]
    return logprobs.cpu()


def _loaded_cache(model, layers: list, rows: int):
    """A DynamicCache holding ``layers`` (keys and values of a batch of one) for ``rows`` sequences."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    for layer, (keys, values) in enumerate(layers):
        cache.update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1), layer)
    return cache


def _context_cache(model, prefix_cache: list, prefix_length: int, suffix: list[int]):
    """Keys and values after prefix + suffix (continuing the prefix's cache), and the log-softmax
    of the next token after it."""
    from transformers import DynamicCache

    cache = _loaded_cache(model, prefix_cache, 1) if prefix_cache else DynamicCache(config=model.config)
    positions = torch.arange(prefix_length, prefix_length + len(suffix), device=model.device)[None]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([suffix], device=model.device), position_ids=positions,
                       attention_mask=torch.ones(1, prefix_length + len(suffix), dtype=torch.long, device=model.device),
                       use_cache=True, logits_to_keep=1, **{_cache_argument(model): cache}).logits[0, -1].float()
    return [(keys, values) for keys, values, *_ in cache], (logits - _log_normaliser(logits)).cpu()


def _option_token_logprobs(model, context_cache: list, context_len: int, first: torch.Tensor,
                           options: list[list[int]], pad_id: int) -> list[list[float]]:
    """Per option, the log-probability of each of its tokens after the context: the first from
    ``first`` (the next-token log-softmax after the context), the others from one batched pass
    of all options (right-padded) continuing the context's cache."""
    longer = [k for k, option in enumerate(options) if len(option) > 1]
    result = [[first[option[0]].item()] for option in options]
    if not longer:
        return result
    input_ids, mask = _pad([options[k][:-1] for k in longer], pad_id, side="right")
    positions = context_len + torch.arange(input_ids.shape[1])[None].expand(len(longer), -1)
    mask = torch.cat([torch.ones(len(longer), context_len, dtype=mask.dtype), mask], dim=1)
    with torch.inference_mode():
        logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device),
                       position_ids=positions.to(model.device), use_cache=True,
                       **{_cache_argument(model): _loaded_cache(model, context_cache, len(longer))}).logits.float()
        logprobs = (logits - _log_normaliser(logits)[..., None]).cpu()
    for row, k in enumerate(longer):
        targets = options[k][1:]
        result[k] += logprobs[row, torch.arange(len(targets)), torch.tensor(targets)].tolist()
    return result


def _batched_option_logprobs(model, encoded: list[tuple[list[int], list[list[int]]]], pad_id: int
                             ) -> list[list[list[float]]]:
    """Per question, the log-probability of each token of each option after its context, from one
    right-padded pass of every context + option (but its last token) of the batch."""
    sequences = [(context + option)[:-1] for context, options in encoded for option in options]
    input_ids, mask = _pad(sequences, pad_id, side="right")
    with torch.inference_mode():
        logits = model(input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device)).logits
    result, row = [], 0
    for context, options in encoded:
        result.append([])
        for option in options:
            scores = logits[row, len(context) - 1:len(context) - 1 + len(option)].float()
            scores = scores - _log_normaliser(scores)[:, None]
            result[-1].append(scores[torch.arange(len(option)), torch.tensor(option)].tolist())
            row += 1
    return result


def _cache_argument(model) -> str:
    """The forward argument that takes a key/value cache (``past_key_values`` before transformers renamed it)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _continuation_token_logprobs(model, context: list[int], continuation: list[int], limit: int) -> list[float]:
    """Log-probability of each continuation token after the context, of which only the last
    ``limit`` tokens of context + continuation but the last are read (the harness's truncation)."""
    whole = (context + continuation)[-(limit + 1):]
    ids = torch.tensor([whole[:-1]], device=model.device)
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    positions = torch.arange(len(whole) - 1 - len(continuation), len(whole) - 1, device=ids.device)
    values = logprobs[positions, torch.tensor(continuation, device=ids.device)]
    if not torch.isfinite(values).all():
        raise InferenceError(f"non-finite log-probabilities {values.tolist()} for continuation {continuation}")
    return values.tolist()


# ----------------------------------------------------------------------------- shared helpers
def _pad(sequences: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def _log_normaliser(logits: torch.Tensor) -> torch.Tensor:
    """log-sum-exp of the logits along the vocabulary, checked by ``_check_finite``."""
    return _check_finite(torch.logsumexp(logits, dim=-1))


def _check_finite(lse: torch.Tensor) -> torch.Tensor:
    """``lse`` (log-sum-exp per position); InferenceError if any is NaN or infinite."""
    bad = ~torch.isfinite(lse)
    if bad.any():
        raise InferenceError(f"the model produced NaN or infinite log-probabilities at {int(bad.sum())} "
                             f"of {bad.numel()} positions of a batch; try inference.dtype: float32")
    return lse
