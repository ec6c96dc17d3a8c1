"""The model registry (workflow_scripts/registry.py): every model's name, source, revisions with their step or
epoch, labels, parent and origin, built from small configs validated as the Snakefile does."""
from __future__ import annotations

import pytest
from conftest import ROOT
from snakemake.utils import validate

from workflow_scripts.registry import Revision, build_registry, named_revision

SIZE = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
SUITE = {"family": "toy", "sizes": {"xs": SIZE, "s": SIZE}, "dynamics": "s", "steps": 4, "checkpoints": [1, 2, 4]}
ALIGN = {"instructions": {"narrow": {"format": "geonames"}, "broad": {"format": "geonames"}},
         "tuning": {"full": {}, "lora": {}}, "epochs": 2,
         "preference": {"policy": "broad-full", "data": {"format": "geonames"}, "rlhf": {"epochs": 1}, "dpo": {}}}


def registry(**config):
    """The registry of ``config`` (no models unless given), validated against the schema with its defaults."""
    config = {"models": {}, **config}
    validate(config, schema=str(ROOT / "config" / "schema.yaml"))
    return build_registry(config)


def test_a_suite_has_every_size_and_data_variant_at_its_last_step_and_dynamics_at_every_checkpoint():
    models = registry(pretrain=SUITE).models
    assert list(models) == ["toy-xs-standard", "toy-xs-deduped", "toy-s-standard", "toy-s-deduped"]
    dynamics = models["toy-s-standard"]
    assert dynamics.revisions == (Revision("step1", step=1), Revision("step2", step=2), Revision("step4", step=4))
    assert all(m.revisions == (Revision("step4", step=4),) for name, m in models.items() if name != "toy-s-standard")
    deduped = models["toy-xs-deduped"]
    assert deduped.labels == {"family": "toy", "data": "deduped", "stage": "base", "size": "xs"}
    assert list(deduped.labels) == ["family", "data", "stage", "size"]  # the tables' column order
    assert (deduped.origin, deduped.folder) == ("pretrain", "results/pretrain/models/toy-xs-deduped")
    assert deduped.source == "local:results/pretrain/models/toy-xs-deduped" and deduped.parent is None


def test_an_aligned_suite_model_has_tuned_rlhf_and_dpo_models_with_their_parents():
    reg = registry(pretrain=SUITE, align={"base": "toy-s-standard", **ALIGN})
    aligned = reg.of("tune", "rlhf", "dpo")
    assert list(aligned) == ["toy-s-standard-sft-narrow-full", "toy-s-standard-sft-narrow-lora",
                             "toy-s-standard-sft-broad-full", "toy-s-standard-sft-broad-lora",
                             "toy-s-standard-rlhf", "toy-s-standard-dpo"]
    lora = aligned["toy-s-standard-sft-narrow-lora"]
    assert lora.labels == {"family": "toy", "data": "narrow", "stage": "sft", "size": "s", "tuning": "lora"}
    assert lora.revisions == (Revision("epoch1", epoch=1), Revision("epoch2", epoch=2))
    assert (lora.origin, lora.parent, lora.parent_revision) == ("tune", "toy-s-standard", "step4")  # the last step
    assert lora.source == "local:results/align/models/toy-s-standard-sft-narrow-lora"
    rlhf, dpo = aligned["toy-s-standard-rlhf"], aligned["toy-s-standard-dpo"]
    assert rlhf.labels == {"family": "toy", "data": "broad", "stage": "rlhf", "size": "s", "tuning": "full"}
    assert (rlhf.parent, rlhf.parent_revision) == ("toy-s-standard-sft-broad-full", "epoch2")  # its last epoch
    assert rlhf.revision_names == ["epoch1"] and dpo.revision_names == ["epoch1", "epoch2"]  # the schema's 2
    base = ("toy-s-standard", "step4")
    assert reg.base_of("toy-s-standard-dpo") == reg.base_of("toy-s-standard-sft-broad-lora") == base
    with pytest.raises(ValueError, match="'toy-s-standard' was not trained from another model"):
        reg.base_of("toy-s-standard")


def test_config_models_keep_their_labels_and_their_revisions_name_steps_or_epochs():
    models = registry(models={
        "pythia": {"source": "hf:EleutherAI/pythia-70m", "revisions": ["step16", "step4", "main"], "stage": "base",
                   "family": "pythia", "resources": {"gpu": 1}, "inference": {"batch_size": 2}},
        "pythia-steps": {"source": "hf:EleutherAI/pythia-70m", "revisions": ["step16", "step4"]},
        "tuned": {"source": "local:elsewhere", "revisions": ["epoch2", "epoch10"], "tuning": "lora"},
        "plain": {"source": "gguf:model.gguf"}}).models
    pythia = models["pythia"]
    assert pythia.labels == {"family": "pythia", "stage": "base"} and list(pythia.labels) == ["family", "stage"]
    assert [(r.step, r.epoch) for r in pythia.revisions] == [(16, None), (4, None), (None, None)]
    assert pythia.ordered_revisions() == ["step16", "step4", "main"]  # one revision names no step: as listed
    assert models["pythia-steps"].ordered_revisions() == ["step4", "step16"]
    assert models["tuned"].ordered_revisions() == ["epoch2", "epoch10"]
    assert [r.epoch for r in models["tuned"].revisions] == [2, 10]
    assert (pythia.resources, pythia.inference) == ({"gpu": 1}, {"batch_size": 2})
    assert (pythia.origin, pythia.folder) == ("config", None)
    assert models["plain"].revisions == (Revision("main"),) and models["plain"].labels == {}  # the schema's [main]
    with pytest.raises(KeyError, match="model 'plain' has no revision 'step1' \\(revisions: main\\)"):
        models["plain"].revision("step1")


def test_a_config_model_aligned_at_a_revision_passes_its_labels_inference_and_resources_on():
    reg = registry(models={"pythia": {"source": "hf:EleutherAI/pythia-70m", "revisions": ["step4", "step16"],
                                      "family": "pythia", "data": "pile", "size": "70m",
                                      "inference": {"dtype": "float32"}, "resources": {"mem_mb": 9}}},
                   align={"base": "pythia", "revision": "step4", "instructions": {"alpaca": {"format": "alpaca"}},
                          "tuning": {"full": {}}})
    tuned = reg.models["pythia-sft-alpaca-full"]
    assert tuned.labels == {"family": "pythia", "data": "alpaca", "stage": "sft", "size": "70m", "tuning": "full"}
    assert (tuned.parent, tuned.parent_revision) == ("pythia", "step4")
    assert (tuned.inference, tuned.resources) == ({"dtype": "float32"}, {"mem_mb": 9})
    assert tuned.revision_names == ["epoch1", "epoch2", "epoch3"]  # the schema's 3 epochs
    assert list(reg.of("rlhf", "dpo")) == []


def test_imported_runs_are_models_of_one_revision_without_step():
    labels = {"stage": "sft", "family": "llama"}
    models = registry(models={"a": {"source": "hf:org/a"}},
                      imports={"llama": {"lm_eval": "runs/llama", "labels": labels}}).models
    assert list(models) == ["a", "llama"]
    llama = models["llama"]
    assert (llama.source, llama.revisions, llama.origin) == ("lm_eval:runs/llama", (Revision("lm_eval"),), "imports")
    assert list(llama.labels) == ["family", "stage"]


@pytest.mark.parametrize("config, message", [
    (dict(models={"toy-xs-standard": {"source": "hf:a/b"}}, pretrain=SUITE),
     r"config: models \['toy-xs-standard'\] are also names of the pretrain suite; rename them"),
    (dict(models={"toy-s-standard-dpo": {"source": "hf:a/b"}}, pretrain=SUITE,
          align={"base": "toy-s-standard", **ALIGN}),
     r"config: models \['toy-s-standard-dpo'\] are also names of aligned models; rename them"),
    (dict(pretrain=SUITE, imports={"toy-s-deduped": {"lm_eval": "runs"}}),
     r"config: imports: \['toy-s-deduped'\] are also names of models; rename them"),
    (dict(pretrain=SUITE, align={"base": "toy", **ALIGN}),
     r"config: align.base 'toy' is not a model \(models: toy-xs-standard, toy-xs-deduped, toy-s-standard, "
     r"toy-s-deduped\)"),
    (dict(pretrain=SUITE, align={"base": "toy-xs-standard", "revision": "step2", **ALIGN}),
     r"config: align.revision 'step2' is not a revision of 'toy-xs-standard' \(step4\); add it there"),
    (dict(pretrain=SUITE, align={"base": "toy-s-standard", **ALIGN,
                                 "preference": {**ALIGN["preference"], "policy": "x-full"}}),
     r"config: align.preference.policy 'x-full' is not a tuned model \(narrow-full, narrow-lora, broad-full, "
     r"broad-lora\)"),
])
def test_clashing_names_and_an_unknown_base_revision_or_policy_are_named(config, message):
    with pytest.raises(ValueError, match=message):
        registry(**config)


@pytest.mark.parametrize("name, step, epoch", [
    ("step0", 0, None), ("step143000", 143000, None), ("epoch1", None, 1), ("epoch12", None, 12),
    ("main", None, None), ("step12a", None, None), ("mystep5", None, None), ("epoch", None, None),
    ("epoch2b", None, None)])
def test_a_config_revision_names_its_step_or_epoch(name, step, epoch):
    assert named_revision(name) == Revision(name, step=step, epoch=epoch)
