"""The inference stage: raw token log-probabilities of one checkpoint on every task.

Only this stage runs the model, loaded once per checkpoint for all tasks (start-up and loading
cost more than a small task's inference). It stores what every confidence method needs, so that a
new method, another bin count or a new figure never runs the model again:

- ``clm``: per predicted token ``item_id, position, target_id, target_logprob, max_logprob,
  argmax_id, entropy, context_len``: every token of a document is predicted exactly once, the
  first from the prefix token (BOS, or EOS where there is none), in windows of at most the
  model's context (``window_mode``: ``rolling`` as lm-evaluation-harness's
  ``loglikelihood_rolling``, or ``{"stride": N}`` as the transformers perplexity guide), streamed
  to Parquet one row group at a time;
- ``generation``: per fact the greedy continuation up to the stop rule: ``token_ids,
  token_logprobs`` (the answer's tokens), ``generated`` (the raw text), ``answer_text`` (cut at
  the stop rule), ``gold_first_ids`` (the first token carrying text of every alias, encoded after
  the prompt), ``first_text`` (the index of the first answer token carrying text) and
  ``truncated``;
- ``multiple_choice``: per question the log-probability of every option continuation
  (``" A"`` ... ``" D"``) after the prompt, as lm-evaluation-harness computes it, and ``truncated``.

Prompts longer than the model's context are left-truncated as the harness does (generation
leaves room for ``max_new_tokens``); such items are counted in the log and flagged ``truncated``.
Prompts begin with the BOS token as ``add_bos`` says (``auto``: as the tokenizer does by
default, as the harness's HF backend does); an EOS token a tokenizer appends is never scored.

Batches are sorted by length, longest first; on out-of-memory the batch size halves and stays so.

A long job keeps its finished work in shards (``<out>.shards/``, each written atomically: every
``SHARD_ITEMS`` questions or facts, every CLM row group), so that a job killed midway resumes
after its last shard, with the batches it would have run anyway: the assembled table is the one an
uninterrupted job writes. Once the table is written, the shards give way to the table itself (a
hard link, no extra disk), which a rerun of the same fingerprint takes instead of running the model:
the job killed before its other tasks were done, or run again for a task added to the config.
Work made with other settings, data, checkpoint or code is discarded.

The modules: ``runner`` (tasks, shards, resume), the drivers of each kind (``clm``, ``generation``,
``multiple_choice``: the items, their batches and their rows), ``backend`` (what the drivers ask of the
engine that runs the model, and ``BACKENDS`` by name), ``transformers_backend`` (the first engine),
``batches`` and ``schemas`` (the raw tables).
"""
from .backend import BACKENDS, Backend, InferenceError, load_backend
from .runner import SETTINGS, check_settings, infer_checkpoint, infer_table, load_for_tasks, run_inference
from .schemas import ANSWER_SCHEMA, OPTION_SCHEMA, SCHEMAS, TOKEN_SCHEMA, write_row_groups

__all__ = ["ANSWER_SCHEMA", "BACKENDS", "OPTION_SCHEMA", "SCHEMAS", "SETTINGS", "TOKEN_SCHEMA", "Backend",
           "InferenceError", "check_settings", "infer_checkpoint", "infer_table", "load_backend", "load_for_tasks",
           "run_inference", "write_row_groups"]
