"""The align stage's training: instruction tuning (full or LoRA) and preference optimisation (RLHF, DPO)
with trl and peft, on the tables of ``align_data``.

- ``prompt_completion``: an example in the tokenizer's chat template, or Alpaca's prompt where the
  tokenizer has none.
- ``tune`` (supervised, full or LoRA), ``train_reward_model``, ``rlhf`` (trl's RLOO against the
  reward model: trl 1.x ships no PPO) and ``dpo``: each writes ``<out>/epoch<N>/`` Hugging Face
  folders, which a ``local:`` model source reads as revisions. Trainer checkpoints go to a work
  folder, so a killed run resumes from its last epoch, where the work folder's fingerprint
  (settings, inputs, code, libraries) is that of the rerun.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .faults import fault_point
from .names import check_inside_results
from .tables import (
    atomic_dir,
    checkpoint_problem,
    model_files,
    prepare_work_dir,
    read_table,
    stage_fingerprint,
    write_table,
)

log = logging.getLogger(__name__)

# Stanford Alpaca's training prompts (tatsu-lab/stanford_alpaca, train.py, PROMPT_DICT); the
# response follows "### Response:" directly and ends with the end-of-text token.
ALPACA_PROMPT = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.\n\n"
                 "### Instruction:\n{instruction}\n\n### Response:")
ALPACA_PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.\n\n"
                       "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")


def _pretrained(auto_class, folder, **kwargs):
    """``auto_class.from_pretrained(folder)``, running no code of the checkpoint's own, and saying so: every model
    here descends from results/align/base, which fetch_align_base fetches without trust_remote_code (a base that
    brings code of its own stops there); told, transformers never asks on standard input, which a job has not."""
    return auto_class.from_pretrained(folder, trust_remote_code=False, **kwargs)


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

    pairs = [prompt_completion(tokenizer, i, g, o)
             for i, g, o in zip(table["instruction"], table["input"], table["output"])]
    return Dataset.from_dict({"prompt": [p for p, _ in pairs], "completion": [c for _, c in pairs]})


def _training_data(model_dir, data_path, build, max_length: int, threads: int):
    """(tokenizer, table, dataset, max_length) of a training job: the model's tokenizer, the data table,
    its trainer dataset (``build(table, tokenizer)``) and max_length cut to the model's context, with
    the prompts' lengths checked against it."""
    from transformers import AutoTokenizer

    torch.set_num_threads(max(1, threads))
    tokenizer = _pretrained(AutoTokenizer, model_dir)
    table = read_table(data_path)
    dataset = build(table, tokenizer)
    max_length = _within_context(model_dir, max_length)
    _check_lengths(list(dataset["prompt"]), tokenizer, max_length, data_path)
    return tokenizer, table, dataset, max_length


def _within_context(model_dir, max_length: int) -> int:
    """``max_length``, cut to the model's context where that is shorter."""
    from transformers import AutoConfig

    context = getattr(_pretrained(AutoConfig, model_dir), "max_position_embeddings", None) or max_length
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
    for instruction, given, chosen, rejected in zip(table["instruction"], table["input"], table["chosen"],
                                                    table["rejected"]):
        prompt, good = prompt_completion(tokenizer, instruction, given, chosen)
        rows["prompt"].append(prompt)
        rows["chosen"].append(good)
        rows["rejected"].append(prompt_completion(tokenizer, instruction, given, rejected)[1])
    return Dataset.from_dict(rows)


# ----------------------------------------------------------------------------- training
def parallel_arguments(parallel: dict) -> dict:
    """The Trainer's arguments for a run in ``parallel["processes"]`` processes (``launch``) of
    ``parallel["strategy"]``: none for one process or DDP (the Trainer's own in a distributed run);
    FSDP sharding every transformer block, with full weights in each checkpoint; DeepSpeed ZeRO-3,
    with the 16-bit weights gathered on save."""
    if parallel["processes"] == 1 or parallel["strategy"] == "ddp":
        return {}
    if parallel["strategy"] == "fsdp":
        return {"fsdp": True, "fsdp_config": {"version": 2, "reshard_after_forward": True,
                                              "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                              "state_dict_type": "FULL_STATE_DICT"}}
    if parallel["strategy"] == "deepspeed_zero3":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ImportError("strategy deepspeed_zero3 needs DeepSpeed: pip install deepspeed "
                              "(on a machine with CUDA)")
        return {"deepspeed": {"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
                              "bf16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto",
                              "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
                              "gradient_clipping": "auto"}}
    raise ValueError(f"unknown parallel strategy {parallel['strategy']!r}: expected ddp, fsdp or deepspeed_zero3")


def _trainer_args(config_class, work_dir: Path, *, epochs: int, batch_size: int, lr: float, seed: int,
                  parallel: dict, **extra):
    """Arguments shared by every trainer: one checkpoint per epoch, seeded, bf16 on GPUs that have it, the
    processes' strategy (``parallel_arguments``; on CPUs, gloo)."""
    cuda = torch.cuda.is_available()
    return config_class(output_dir=str(work_dir), num_train_epochs=epochs, per_device_train_batch_size=batch_size,
                        learning_rate=lr, seed=seed, data_seed=seed, save_strategy="epoch", logging_strategy="epoch",
                        report_to="none", disable_tqdm=True, bf16=cuda and torch.cuda.is_bf16_supported(),
                        use_cpu=not cuda, dataloader_num_workers=0, **parallel_arguments(parallel), **extra)


def _resume_point(work_dir: Path, fingerprint: dict, processes: int) -> str | None:
    """The trainer checkpoint to resume from: the last of those that follow each other from the first, each
    written whole (``_complete``) and undamaged (``tables.checkpoint_problem``; every epoch's is published). The
    first that is not, cut off by a kill while saving or damaged since, is removed with those after it, and the
    log says why. A work folder of another fingerprint is emptied."""
    if not prepare_work_dir(work_dir, fingerprint):
        return None
    found = sorted(work_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for number, checkpoint in enumerate(found):
        if not _complete(checkpoint, processes):
            log.info("%s was not written whole (a job killed while saving): removed", checkpoint)
        elif problem := checkpoint_problem(checkpoint):
            log.warning("%s: damaged, its checkpoint removed and trained again", problem)
        else:
            continue
        for later in found[number:]:
            check_inside_results(later)
            shutil.rmtree(later)
        found = found[:number]
        break
    if not found:
        return None
    log.info("resuming from %s", found[-1])
    return str(found[-1])


def _complete(checkpoint: Path, processes: int) -> bool:
    """Whether every process finished its part of a trainer checkpoint: the first writes the trainer
    state after the weights and optimiser, each process its random state."""
    rng = ["rng_state.pth"] if processes == 1 else [f"rng_state_{rank}.pth" for rank in range(processes)]
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return all((checkpoint / name).is_file() for name in rng)


def _epoch_checkpoints(work_dir: Path, epochs: int) -> list[Path]:
    found = sorted(work_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if len(found) != epochs:
        raise RuntimeError(f"{work_dir}: expected {epochs} epoch checkpoints, found {[p.name for p in found]}")
    return found


def _train(make_trainer, work_dir, out_dir, settings: dict, inputs: dict, epochs: int, export,
           history_name="log.parquet") -> None:
    """Run a trainer with one checkpoint per epoch (resuming one left by a killed run of the same
    settings, inputs, code and libraries: ``tables.stage_fingerprint``), then publish
    ``out_dir/epoch<N>`` with ``export(checkpoint, folder, epoch)`` (built beside ``out_dir``, then renamed:
    ``tables.atomic_dir``). In a run of several processes the first prepares the work folder before
    the others look at it, and it alone publishes.

    On resume the weights of a fully trained model are loaded here (the reference model of DPO and
    RLHF stays the starting policy): the Trainer's own resume loads weights by raw name and silently
    skips renamed ones (GPT-NeoX's output layer under transformers 5)."""
    work_dir, out_dir = Path(work_dir), Path(out_dir)
    fingerprint = stage_fingerprint(__name__, settings, inputs)
    trainer = make_trainer()
    with trainer.accelerator.main_process_first():
        resume = _resume_point(work_dir, fingerprint, trainer.accelerator.num_processes)
    trainer.add_callback(_fault_after_save())
    if resume and not hasattr(trainer.model, "peft_config"):
        from transformers import AutoModelForCausalLM

        trainer.model.load_state_dict(_pretrained(AutoModelForCausalLM, resume, dtype=torch.float32).state_dict())
    trainer.train(resume_from_checkpoint=resume)
    if not trainer.accelerator.is_main_process:
        return
    with atomic_dir(out_dir) as tmp:
        for epoch, checkpoint in enumerate(_epoch_checkpoints(work_dir, epochs), start=1):
            export(checkpoint, tmp, epoch)
        history = pd.DataFrame(trainer.state.log_history)
        write_table(history, tmp / history_name, provenance={"stage": "align", "settings": settings,
                                                             "inputs": fingerprint["inputs"]})


def _fault_after_save():
    """A trainer callback at the fault point ``train`` (tests: killed after a checkpoint is saved)."""
    from transformers import TrainerCallback

    class FaultAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if torch.distributed.is_initialized():
                torch.distributed.barrier()  # every process has written its part
            fault_point("train", Path(args.output_dir) / f"checkpoint-{state.global_step}")

    return FaultAfterSave()


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

    model = PeftModel.from_pretrained(_pretrained(AutoModelForCausalLM, base_dir, dtype=torch.float32),
                                      adapter_dir).merge_and_unload()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def tune(base_dir, data_path, out_dir, work_dir, *, tuning: str, lora: dict, epochs: int, batch_size: int,
         gradient_accumulation_steps: int, lr: float, max_length: int, seed: int, parallel: dict, threads: int) -> None:
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
        peft_config = LoraConfig(r=lora.get("r", 8), lora_alpha=lora.get("alpha", 16),
                                 lora_dropout=lora.get("dropout", 0.0), target_modules=lora.get("target_modules"),
                                 task_type="CAUSAL_LM")
    settings = {"tuning": tuning, "lora": lora, "epochs": epochs, "batch_size": batch_size,
                "gradient_accumulation_steps": gradient_accumulation_steps, "lr": lr, "max_length": max_length,
                "seed": seed, "parallel": parallel}
    log.info("%s tuning on %d examples for %d epochs", tuning, len(table), epochs)

    def make_trainer():
        model = _pretrained(AutoModelForCausalLM, base_dir, dtype=torch.float32)
        args = _trainer_args(SFTConfig, Path(work_dir), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                             parallel=parallel, max_length=max_length, completion_only_loss=True,
                             gradient_accumulation_steps=gradient_accumulation_steps)
        return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=peft_config)

    def export(checkpoint: Path, folder: Path, epoch: int) -> None:
        if tuning == "lora":
            shutil.copytree(checkpoint, folder / "adapters" / f"epoch{epoch}",
                            ignore=shutil.ignore_patterns("optimizer.pt", "scheduler.pt", "rng_state*",
                                                          "trainer_state.json", "training_args.bin"))
            merge_adapter(base_dir, checkpoint, folder / f"epoch{epoch}", tokenizer)
        else:
            _copy_model(checkpoint, folder / f"epoch{epoch}", tokenizer)

    _train(make_trainer, work_dir, out_dir, settings, {"base": base_dir, "data": data_path}, epochs, export)


def train_reward_model(policy_dir, pairs_path, out_dir, *, epochs: int, batch_size: int, lr: float, max_length: int,
                       seed: int, parallel: dict, threads: int, eval_fraction: float = 0.1) -> None:
    """A reward model (the policy with a scalar head, trl's RewardTrainer) trained on preference pairs;
    its accuracy on held-out pairs (of the model as saved) goes to ``out_dir/eval.parquet``. One short run,
    never resumed: its work folder is emptied first."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl import RewardConfig, RewardTrainer

    torch.set_num_threads(max(1, threads))
    tokenizer = _pretrained(AutoTokenizer, policy_dir)
    table = read_table(pairs_path)
    order = np.random.default_rng(seed).permutation(len(table))
    n_eval = int(round(eval_fraction * len(table)))
    train, held_out = table.iloc[order[n_eval:]], table.iloc[order[:n_eval]]
    out_dir = Path(out_dir)
    work_dir = out_dir.with_name(f".{out_dir.name}.work")
    check_inside_results(work_dir)  # emptied below
    max_length = _within_context(policy_dir, max_length)
    pairs = _preference_dataset(train, tokenizer)
    _check_lengths([p + c for p, c in zip(pairs["prompt"], pairs["chosen"])], tokenizer, max_length, pairs_path)
    # The scalar head (score.weight) is new: initialised from torch's global generator, which a fresh
    # process seeds at random and the Trainer seeds only after the model exists.
    set_seed(seed)
    model = _pretrained(AutoModelForSequenceClassification, policy_dir, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = _trainer_args(RewardConfig, work_dir, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                         parallel=parallel, max_length=max_length)
    args.save_strategy = "no"
    trainer = RewardTrainer(model=model, args=args, train_dataset=pairs, processing_class=tokenizer)
    if trainer.accelerator.is_main_process:
        shutil.rmtree(work_dir, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.train()
    trainer.save_model(str(work_dir / "final"))  # every process: sharded weights are gathered
    if not trainer.accelerator.is_main_process:
        return
    saved = _pretrained(AutoModelForSequenceClassification, work_dir / "final", dtype=torch.float32)
    accuracy = _pair_accuracy(saved, tokenizer, _preference_dataset(held_out, tokenizer)) if n_eval else None
    log.info("reward model: accuracy %.3f on %d held-out pairs", accuracy or float("nan"), n_eval)
    with atomic_dir(out_dir) as tmp:
        for file in model_files(work_dir / "final"):
            shutil.copy2(file, tmp / file.name)
        tokenizer.save_pretrained(tmp)
        write_table(pd.DataFrame([{"pairs_train": len(train), "pairs_held_out": n_eval, "accuracy": accuracy}]),
                    tmp / "eval.parquet", provenance={"stage": "reward_model", "lr": lr, "epochs": epochs, "seed": seed,
                                                      "parallel": parallel})
    shutil.rmtree(work_dir, ignore_errors=True)


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
         max_completion_length: int, lr: float, beta: float, prompts: int | None, seed: int, parallel: dict,
         threads: int) -> None:
    """On-policy RL from ``policy_dir`` against the reward model (trl's RLOOTrainer, REINFORCE
    leave-one-out), on the prompts of the preference pairs; ``out_dir/epoch<N>`` for each epoch."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import RLOOConfig, RLOOTrainer

    torch.set_num_threads(max(1, threads))
    tokenizer = _pretrained(AutoTokenizer, policy_dir, padding_side="left")
    table = read_table(pairs_path)
    if prompts is not None:
        table = table.iloc[np.sort(np.random.default_rng(seed).permutation(len(table))[:prompts])]
    from datasets import Dataset

    dataset = Dataset.from_dict({"prompt": [prompt_completion(tokenizer, i, g)[0]
                                            for i, g in zip(table["instruction"], table["input"])]})
    settings = {"epochs": epochs, "batch_size": batch_size, "num_generations": num_generations,
                "max_completion_length": max_completion_length, "lr": lr, "beta": beta, "prompts": prompts,
                "seed": seed, "parallel": parallel}

    def make_trainer():
        reward_model = _pretrained(AutoModelForSequenceClassification, reward_dir, num_labels=1, dtype=torch.float32)
        args = _trainer_args(RLOOConfig, Path(work_dir), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                             parallel=parallel, num_generations=num_generations,
                             max_completion_length=max_completion_length, beta=beta)
        return RLOOTrainer(model=_pretrained(AutoModelForCausalLM, policy_dir, dtype=torch.float32),
                           reward_funcs=reward_model, args=args, train_dataset=dataset, processing_class=tokenizer,
                           reward_processing_classes=_pretrained(AutoTokenizer, reward_dir))

    _train(make_trainer, work_dir, out_dir, settings, {"policy": policy_dir, "reward": reward_dir, "data": pairs_path},
           epochs, lambda checkpoint, folder, epoch: _copy_model(checkpoint, folder / f"epoch{epoch}", tokenizer))


def dpo(policy_dir, pairs_path, out_dir, work_dir, *, epochs: int, batch_size: int, lr: float, beta: float,
        max_length: int, seed: int, parallel: dict, threads: int) -> None:
    """Direct preference optimisation of ``policy_dir`` on the pairs (offline; the policy at the start
    is the reference); ``out_dir/epoch<N>`` for each epoch."""
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    tokenizer, table, dataset, max_length = _training_data(policy_dir, pairs_path, _preference_dataset, max_length,
                                                           threads)
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "beta": beta, "max_length": max_length,
                "seed": seed, "parallel": parallel}

    def make_trainer():
        args = _trainer_args(DPOConfig, Path(work_dir), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                             parallel=parallel, beta=beta, max_length=max_length)
        return DPOTrainer(model=_pretrained(AutoModelForCausalLM, policy_dir, dtype=torch.float32), args=args,
                          train_dataset=dataset, processing_class=tokenizer)

    _train(make_trainer, work_dir, out_dir, settings, {"policy": policy_dir, "data": pairs_path}, epochs,
           lambda checkpoint, folder, epoch: _copy_model(checkpoint, folder / f"epoch{epoch}", tokenizer))
