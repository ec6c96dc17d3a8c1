"""The study a config describes (workflow_scripts/study.py): runs, methods, settings, comparison pairs and figure
groups, worked out by hand on small configs validated as the Snakefile does; and the config schema's per-kind
task keys against the kinds' declaration (workflow_scripts/kinds.py)."""
from __future__ import annotations

import pytest
import yaml
from conftest import KIND_DATASETS, ROOT
from snakemake.utils import validate

from workflow_scripts.kinds import KINDS, SCORINGS
from workflow_scripts.study import ConfigError, Study, canonical, group_name, schema_error

SIZE = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
SUITE = {"family": "toy", "sizes": {"xs": SIZE, "s": SIZE}, "dynamics": "s", "steps": 4, "checkpoints": [2, 4]}
ALIGN = {"base": "toy-s-standard", "instructions": {"narrow": {"format": "geonames"}},
         "tuning": {"full": {}, "lora": {}}, "epochs": 2,
         "preference": {"policy": "narrow-full", "data": {"format": "geonames"}, "dpo": {}}}
TASKS = {"prose": {"kind": "clm", "dataset": KIND_DATASETS["clm"], "window": 64},
         "facts": {"kind": "generation", "dataset": KIND_DATASETS["generation"]},
         "geo": {"kind": "multiple_choice", "dataset": KIND_DATASETS["multiple_choice"], "scoring": "continuation"}}


def study(**config) -> Study:
    config = {"models": {}, "tasks": TASKS, **config}
    validate(config, schema=str(ROOT / "config" / "schema.yaml"))
    return Study(config)


def test_runs_methods_and_settings_of_a_config_model():
    s = study(models={"m": {"source": "local:m", "revisions": ["a", "b"], "inference": {"batch_size": 2}}})
    assert s.runs == [(t, "m", r) for t in ("facts", "geo", "prose") for r in ("a", "b")]
    assert s.n_runs == 2
    assert s.methods == {"facts": "first_token_prob", "geo": "continuation_sum", "prose": "max_prob"}
    assert s.task_methods("geo")[:2] == ["continuation_sum", "continuation_norm_chars"]
    # the config's inference section less threads, the task's own keys, then the model's
    assert s.inference_settings("prose", "m") == {"add_bos": "auto", "backend": "transformers", "batch_size": 2,
                                                  "device": "auto", "dtype": "auto",
                                                  "window": 64, "window_mode": "rolling"}
    assert s.prompting("geo") == {"scoring": "continuation", "chat": False}  # chat: the schema's default
    assert s.self_eval_tasks == [] and not s.has_suites and not s.has_alignment


def test_comparison_pairs_and_reliability_groups_of_a_suite_with_alignment():
    s = study(pretrain=SUITE, align=ALIGN, figures={"suites": ["toy"], "dynamics": ["toy-s-standard"]})
    pairs = [(p["comparison"], (p["a"]["model"], p["a"]["revision"]), (p["b"]["model"], p["b"]["revision"]))
             for p in s.comparison_pairs()]
    base = ("toy-s-standard", "step4")
    aligned = [("aligned_vs_base", base, (m, f"epoch{e}")) for m in ("toy-s-standard-sft-narrow-full",
                                                                     "toy-s-standard-sft-narrow-lora") for e in (1, 2)]
    assert pairs[:4] == aligned
    assert ("aligned_vs_base", base, ("toy-s-standard-dpo", "epoch1")) in pairs
    assert ("consecutive_checkpoints", ("toy-s-standard", "step2"), base) in pairs
    assert [p for p in pairs if p[0] == "consecutive_sizes"] == [
        ("consecutive_sizes", ("toy-xs-standard", "step4"), base),
        ("consecutive_sizes", ("toy-xs-deduped", "step4"), ("toy-s-deduped", "step4"))]
    groups = s.reliability_groups["prose"]
    # the model with several checkpoints has its training group; the family's base group keeps the others
    assert groups["toy-s-standard-training"] == [["toy-s-standard", "step2"], ["toy-s-standard", "step4"]]
    assert groups["toy-base"] == [["toy-xs-standard", "step4"], ["toy-xs-deduped", "step4"],
                                  ["toy-s-standard", "step4"], ["toy-s-deduped", "step4"]]
    assert groups["toy-sft"][0] == ["toy-s-standard-sft-narrow-full", "epoch1"]
    assert list(s.alignment) == ["toy-s-standard", "toy-s-standard-sft-narrow-full", "toy-s-standard-sft-narrow-lora",
                                 "toy-s-standard-dpo"]
    assert s.alignment["toy-s-standard"] == ["step4"]
    assert s.has_suites and s.has_dynamics and s.has_pretrained and s.has_preference and s.has_comparisons


def test_training_settings_resources_and_processes():
    s = study(pretrain=SUITE, align={**ALIGN, "tuning": {"full": {"lr": 1e-4, "batch_size": 4,
                                                                   "parallel": {"processes": 2},
                                                                   "resources": {"gpu": 1}},
                                                          "lora": {"r": 4}}})
    full = s.tuning_settings("full")
    assert full["lr"] == 1e-4 and full["lora"] == {} and full["training"]["batch_size"] == 4
    assert s.tuning_settings("lora")["lora"]["r"] == 4
    assert "parallel" not in s.training_settings("full") and "resources" not in s.training_settings("full")
    assert s.training_parallel("full")["processes"] == 2
    assert s.training_resources("full")["gpu"] == 2  # one GPU per process
    assert s.tuning_of("toy-s-standard-sft-narrow-lora") == "lora"
    assert s.policy() == ("toy-s-standard-sft-narrow-full", "epoch2")


def test_mistakes_in_the_config_name_the_key():
    with pytest.raises(ValueError, match=r"config: tasks\.geo\.methods: .*max_prob"):
        study(tasks={"geo": {**TASKS["geo"], "methods": ["max_prob"]}}, models={"m": {"source": "local:m"}})
    with pytest.raises(ValueError, match="nothing to evaluate"):
        study()
    with pytest.raises(ValueError, match=r"config: pretrain\.checkpoints: must end with steps \(4\), got \[4, 2\]"):
        study(pretrain={**SUITE, "checkpoints": [4, 2]})


SCHEMA = ROOT / "config" / "schema.yaml"


def test_schema_errors_name_the_kinds_of_a_key_and_the_nearest_known_key():
    geo = {"models": {}, "tasks": {"geo": {**TASKS["geo"], "window": 64}}}
    assert schema_error(geo, SCHEMA) == "config: tasks.geo.window: `window` is a key of clm tasks only"
    facts = {"models": {}, "tasks": {"facts": {**TASKS["facts"], "scoring": "letters"}}}
    assert schema_error(facts, SCHEMA) == ("config: tasks.facts.scoring: `scoring` is a key of multiple_choice tasks "
                                           "only")
    shot = {"models": {}, "tasks": {"geo": {**TASKS["geo"], "shot": 3}}}
    assert schema_error(shot, SCHEMA) == "config: tasks.geo: unknown key `shot`; did you mean `shots`?"
    assert schema_error({"modles": {}}, SCHEMA) == "config: (top level): unknown key `modles`; did you mean `models`?"
    far = schema_error({"models": {"m": {"source": "local:m", "zzz": 1}}}, SCHEMA)
    assert far.startswith("config: models.m: unknown key `zzz`; known keys: source, revisions,"), far


def test_check_inputs_finds_what_a_job_would_miss_with_its_line(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    dev = tmp_path / "mmlu" / "dev"
    dev.mkdir(parents=True)
    (tmp_path / "mmlu" / "test").mkdir()
    (dev / "anatomy_dev.csv").write_text("q,a,b,c,d,A\n" * 2)
    (tmp_path / "mmlu" / "test" / "anatomy_test.csv").write_text("q,a,b,c,d,B\n")
    model = {"m": {"source": f"local:{tmp_path / 'model'}"}}
    mmlu = {"kind": "multiple_choice", "dataset": {"format": "mmlu_csv", "path": str(tmp_path / "mmlu")}}
    study(models=model, tasks={"mmlu": {**mmlu, "shots": 2}}).check_inputs()
    with pytest.raises(ConfigError) as error:
        study(models=model, tasks={"mmlu": mmlu}).check_inputs()  # mmlu_csv's 5 shots
    assert str(error.value) == (f"config: task 'mmlu': {dev / 'anatomy_dev.csv'}: subject 'anatomy' has 2 dev rows, "
                                "fewer than shots=5")
    with pytest.raises(ConfigError) as error:
        study(models={"m": {**model["m"], "revisions": ["step1"]}}, tasks={"mmlu": {**mmlu, "shots": 2}}).check_inputs()
    assert str(error.value) == (f"config: models.m: model source local:{tmp_path / 'model'}: revision 'step1' not "
                                f"found (no {tmp_path / 'model' / 'step1' / 'config.json'}); available revisions: none")
    lama = {"kind": "generation", "dataset": {"format": "lama", "path": str(tmp_path / "*.jsonl")}}
    with pytest.raises(ConfigError, match=r"^config: task 'facts': no file matches '.*\*\.jsonl'$"):
        study(models=model, tasks={"facts": lama}).check_inputs()
    hub = {**lama, "dataset": {**lama["dataset"], "hub": {"repo_id": "a/b"}}}
    study(models=model, tasks={"facts": hub}).check_inputs()  # a hub dataset's files: its job's, after the download


def test_canonical_and_group_names():
    assert list(canonical({"b": 1, "a": {"d": 2, "c": [{"f": 3, "e": 4}]}})) == ["a", "b"]
    assert list(canonical({"a": {"d": 2, "c": 1}})["a"]) == ["c", "d"]
    assert group_name("my model/1", "base") == "my_model_1-base"


def test_the_schema_declares_exactly_the_kinds_and_their_own_task_keys():
    """config/schema.yaml names the kinds and, per kind, the task keys only that kind takes: the same as KINDS."""
    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    task = schema["properties"]["tasks"]["additionalProperties"]
    assert task["properties"]["kind"]["enum"] == list(KINDS)
    assert task["properties"]["scoring"]["enum"] == list(SCORINGS)
    for branch in task["allOf"]:
        kind = branch["if"]["properties"]["kind"]["const"]
        assert set(branch["then"]["properties"]) == set(KINDS[kind].settings), kind
        assert set(branch.get("else", {}).get("properties", {})) <= set(KINDS[kind].settings), kind
