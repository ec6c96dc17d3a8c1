"""What the runner asks of an inference backend, the engine that runs a model, and the backends by name.

As lm-evaluation-harness's ``LM`` interface, a backend answers requests of token ids and leaves the rest to
the runner (the items, batching, shards, tables): the statistics of CLM windows, the log-probabilities of
options after their prompt, greedy generation up to stop strings, and the tokenization the runner needs.
``BACKENDS`` names each backend's loader (config ``inference.backend``); ``transformers`` is the first.
"""
from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from typing import Any, NamedTuple, Protocol

import numpy as np

DEFAULT_BACKEND = "transformers"


class InferenceError(RuntimeError):
    """Inference cannot give usable numbers: NaN or infinite log-probabilities, an option that
    adds no token after its prompt, or a model whose output head CLM cannot reproduce."""


class Window(NamedTuple):
    """A CLM window: its input tokens, of which the last ``len(targets)`` predict ``targets``
    (the next token of each), and where those targets start in the document."""
    item_id: str
    first: int  # position of the first target in the document's tokens
    inputs: list[int]
    targets: list[int]
    ends_document: bool


class Codec(Protocol):
    """Text to the model's token ids and back."""

    def encode(self, texts: list[str], bos: bool) -> list[list[int]]:
        """Token ids of each text with no special token but BOS first where ``bos`` (an EOS that a tokenizer
        appends by default is never added: it would be scored as part of a continuation)."""

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids``, special tokens left out."""


class Backend(Codec, Protocol):
    """A model loaded to answer the runner's requests (every log-probability in nats, as a float)."""

    device: str  # where it runs, as the raw tables' provenance names it ("cpu", "cuda:0")
    dtype: str  # its number type, likewise ("torch.float32")
    num_parameters: int
    context_length: int  # tokens the model reads at most
    prefix_token: int  # the token the first token of a CLM document is predicted from: BOS, else EOS
    has_chat_template: bool

    def resolve_add_bos(self, add_bos: str | bool) -> bool:
        """Whether prompts begin with BOS: ``auto`` where the tokenizer prepends it by default, else as given
        (ValueError for ``True`` without a BOS token)."""

    def chat_prompt(self, prompt: str) -> str:
        """``prompt`` as the user turn of the chat template, then the start of the assistant turn (ValueError
        without a template)."""

    def out_of_memory(self, error: BaseException) -> bool:
        """Whether ``error`` is the device running out of memory (the runner then halves its batches)."""

    def window_statistics(self, windows: list[Window]) -> list[tuple[np.ndarray, ...]]:
        """Per window, four arrays over its targets: the target's log-probability, the largest log-probability,
        its token (int64) and the entropy of the next-token distribution, from the model's own logits
        (InferenceError where it cannot give them)."""

    def generate(self, contexts: list[list[int]], max_new_tokens: int, stop: list[str]) -> list[tuple[list[int],
                                                                                                   list[float]]]:
        """Per context, the greedy continuation up to a stop string, ``max_new_tokens`` or the end of sequence:
        its tokens up to (without) the first end-of-sequence or padding token, at least one, and their
        log-probabilities."""

    def prefix(self, tokens: list[int]) -> Any:
        """A handle on ``tokens``, the shared beginning of the contexts of the next requests, which the backend
        may compute once for all of them (kept while the runner holds the handle)."""

    def next_token_logprobs(self, prefix: Any, suffixes: list[list[int]], candidates: list[list[int]]
                            ) -> list[tuple[list[float], float]]:
        """Per context prefix + suffix, the log-probability of each of its ``candidates`` as the next token and
        the probability of the distinct candidates together."""

    def option_logprobs(self, prefix: Any, questions: list[tuple[list[int], list[list[int]]]]
                        ) -> list[list[list[float]]]:
        """Per question (its context, beginning with the prefix's tokens, and its options), per option the
        log-probability of each of its tokens after the context (context + option fits the model)."""

    def continuation_logprobs(self, context: list[int], continuation: list[int]) -> list[float]:
        """The log-probability of each continuation token after the context, reading only the last
        ``context_length`` tokens of context + continuation but the last (lm-evaluation-harness's truncation)."""


Loader = Callable[..., Backend]  # loader(checkpoint_dir, *, device, dtype, threads) -> Backend


def load_transformers(checkpoint_dir: str | PathLike, *, device: str, dtype: str, threads: int) -> Backend:
    """The checkpoint's model and tokenizer, through transformers."""
    from .transformers_backend import TransformersBackend  # torch: imported once a model is loaded

    return TransformersBackend.load(checkpoint_dir, device=device, dtype=dtype, threads=threads)


BACKENDS: dict[str, Loader] = {"transformers": load_transformers}


def load_backend(checkpoint_dir: str | PathLike, settings: dict, *, threads: int) -> Backend:
    """The checkpoint loaded by the backend that ``settings`` name (``backend``, default transformers) on its
    ``device`` and ``dtype``, with ``threads`` CPU threads."""
    name = settings.get("backend", DEFAULT_BACKEND)
    if name not in BACKENDS:
        raise ValueError(f"unknown inference backend {name!r}; known: {', '.join(BACKENDS)}")
    return BACKENDS[name](checkpoint_dir, device=settings["device"], dtype=settings["dtype"], threads=threads)
