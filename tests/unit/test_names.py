"""Names that cannot escape results/ (workflow_scripts/names.py): the one name rule, in the schema and at load time
for every kind of name (the config's, the ones the workflow makes, imported harness tasks), before any job; and the
path check in every writer that writes, removes or swaps a file or folder."""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml
from conftest import KIND_DATASETS, ROOT, build_tokenizer
from snakemake.utils import validate

from workflow_scripts.align import train_reward_model
from workflow_scripts.imports import HarnessImportError, find_samples
from workflow_scripts.inference.runner import Shards
from workflow_scripts.names import NAME_PATTERN, check_inside_results, check_name
from workflow_scripts.study import Study, schema_error
from workflow_scripts.tables import atomic_dir, atomic_path, prepare_work_dir, write_table

SCHEMA = ROOT / "config" / "schema.yaml"
RULE = "a name is 1 to 100 ASCII letters, digits, '_', '-', '.' or '+', and not '.' or '..'"
BAD = {"dot": ".", "dotdot": "..", "slash": "a/b", "parent": "../../x", "unicode": "modèle", "space": "a b",
       "long": "x" * 300, "empty": "", "newline": "ab\n"}
GOOD = ["pythia-70m", "step1000-tokens4B", "v1.0+x", "x" * 100]
DATE = "2024-05-01T10-00-00.123456"
SIZE = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
TASK = {"kind": "clm", "dataset": KIND_DATASETS["clm"]}


def harness_run(folder, task: str = "arc"):
    """An lm_eval output folder with one multiple-choice task: as much as a Study reads of it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"samples_{task}_{DATE}.jsonl").write_text("")
    (folder / f"results_{DATE}.json").write_text(json.dumps({"configs": {task: {"output_type": "multiple_choice"}}}))
    return str(folder)


def _model(config, name):
    config["models"] = {name: {"source": "local:m"}}


def _revision(config, name):
    config["models"] = {"m": {"source": "local:m", "revisions": ["main", name]}}


def _task(config, name):
    config["tasks"] = {name: TASK}


def _family(config, name):
    config["pretrain"] = {"family": name, "sizes": {"s": SIZE}, "steps": 2, "checkpoints": [2]}


def _size(config, name):
    config["pretrain"] = {"family": "toy", "sizes": {"s": SIZE, name: SIZE}, "steps": 2, "checkpoints": [2]}


def _data(config, name):
    config["pretrain"] = {"family": "toy", "sizes": {"s": SIZE}, "data": [name], "steps": 2, "checkpoints": [2]}


def _instructions(config, name):
    _model(config, "base")
    config["align"] = {"base": "base", "instructions": {name: {"format": "geonames"}}, "tuning": {"full": {}}}


def _tuning(config, name):
    _model(config, "base")
    config["align"] = {"base": "base", "instructions": {"narrow": {"format": "geonames"}}, "tuning": {name: {}}}


def _import(config, name, folder):
    config["imports"] = {name: {"lm_eval": harness_run(folder)}}


def _import_task(config, name, folder):
    """A good name's samples file is in the run; a bad one is refused before the run is read."""
    config["imports"] = {"h": {"lm_eval": harness_run(folder, name if name in GOOD else "arc"), "tasks": [name]}}


# kind -> (the key an error names, the kind it says, where the name goes in a config)
KINDS = {"model": ("models", "model name", _model), "revision": ("models.m.revisions", "revision", _revision),
         "task": ("tasks", "task name", _task), "family": ("pretrain.family", "family", _family),
         "size": ("pretrain.sizes", "size", _size), "data": ("pretrain.data", "data variant", _data),
         "instructions": ("align.instructions", "instruction set", _instructions),
         "tuning": ("align.tuning", "tuning method", _tuning), "import": ("imports", "model name", _import),
         "import_task": ("imports.h.tasks", "task name", _import_task)}
ENUMS = {"data": "standard", "tuning": "full"}  # kinds whose names the schema lists: these are their good names


def config_with(kind: str, name: str, tmp_path) -> dict:
    config = {"models": {"m": {"source": "local:m"}}, "tasks": {"t": TASK}}
    place = KINDS[kind][2]
    if kind.startswith("import"):
        place(config, name, tmp_path / "run")
    else:
        place(config, name)
    return config


def _shown(name: str) -> str:
    return repr(name) if len(name) <= 40 else f"{name[:40]!r}... ({len(name)} characters)"


# ----------------------------------------------------------------------------- the rule
@pytest.mark.parametrize("name", BAD.values(), ids=BAD)
def test_a_bad_name_is_one_line_naming_the_kind(name):
    with pytest.raises(ValueError) as error:
        check_name("model name", name)
    assert str(error.value) == f"model name {_shown(name)}: {RULE}"
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", GOOD)
def test_a_good_name_passes(name):
    assert check_name("model name", name) == name


def test_the_schema_checks_every_name_with_the_rule_of_names_py():
    schema = yaml.safe_load(SCHEMA.read_text())
    assert schema["$defs"]["name"]["pattern"] == NAME_PATTERN
    name = {"$ref": "#/$defs/name"}
    props = schema["properties"]
    models, imports, pretrain = props["models"], props["imports"], props["pretrain"]["properties"]
    assert models["propertyNames"] == imports["propertyNames"] == props["tasks"]["propertyNames"] == name
    assert models["additionalProperties"]["properties"]["revisions"]["items"] == name
    assert imports["additionalProperties"]["properties"]["tasks"]["items"] == name
    assert pretrain["family"] == name and pretrain["sizes"]["propertyNames"] == name
    assert props["align"]["properties"]["instructions"]["propertyNames"] == name
    patterns = re.findall(r"pattern: (.*)", SCHEMA.read_text())  # no other pattern of names is left
    assert patterns == ['"^(hf|local|gguf|gguf-pkg):.+$"', f"'{NAME_PATTERN}'"]


# ----------------------------------------------------------------------------- at load time
@pytest.mark.parametrize("label", BAD, ids=BAD)
@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_name_of_each_kind_stops_the_schema_and_the_study(kind, label, tmp_path):
    name = BAD[label]
    key, said, _ = KINDS[kind]
    error = schema_error(config_with(kind, name, tmp_path), SCHEMA)
    if label == "newline" and kind not in ENUMS:
        assert error is None  # Python's $ matches before a final newline: the Study's check stops it
    else:
        assert error.startswith(f"config: {key}") and "\n" not in error, error
        assert kind in ENUMS or error.endswith(f": name {_shown(name)}: {RULE}"), error
    # the Study's own check, on a config the schema filled in with a good name first
    good = ENUMS.get(kind, "ok")
    config = config_with(kind, good, tmp_path)
    validate(config, schema=str(SCHEMA))
    bad = json.loads(json.dumps(config).replace(json.dumps(good), json.dumps(name)))
    with pytest.raises(ValueError) as raised:
        Study(bad)
    assert str(raised.value) == f"config: {key}: {said} {_shown(name)}: {RULE}"


@pytest.mark.parametrize("name", GOOD[:3])
@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ENUMS])
def test_good_names_of_each_kind_are_accepted(kind, name, tmp_path):
    config = config_with(kind, name, tmp_path)
    assert schema_error(config, SCHEMA) is None
    validate(config, schema=str(SCHEMA))
    Study(config)


def test_a_name_made_too_long_from_good_names_is_named():
    config = {"models": {}, "tasks": {"t": TASK},
              "pretrain": {"family": "f" * 60, "sizes": {"s" * 40: SIZE}, "steps": 2, "checkpoints": [2]}}
    assert schema_error(config, SCHEMA) is None
    validate(config, schema=str(SCHEMA))
    with pytest.raises(ValueError, match=r"^config: pretrain: model name <family>-<size>-<data> 'f{40}'\.\.\. "
                                         r"\(110 characters\): a name is 1 to 100"):
        Study(config)
    config = {"models": {"b" * 90: {"source": "local:m"}}, "tasks": {"t": TASK},
              "align": {"base": "b" * 90, "instructions": {"narrow": {"format": "geonames"}}, "tuning": {"full": {}}}}
    validate(config, schema=str(SCHEMA))
    with pytest.raises(ValueError, match=r"^config: align: model name <base>-sft-<set>-<tuning> 'b{40}'\.\.\. "
                                         r"\(106 characters\): a name is"):
        Study(config)


@pytest.mark.parametrize("task", [".", "..", "tâche", "x" * 101, "a b"])
def test_an_imported_task_name_is_checked_where_its_samples_file_is_read(task, tmp_path):
    folder = tmp_path / "run"
    harness_run(folder, task)
    with pytest.raises(HarnessImportError) as error:
        find_samples(folder)
    line = f"{folder / f'samples_{task}_{DATE}.jsonl'}: imported task name {_shown(task)}: {RULE}"
    assert str(error.value) == line
    config = {"models": {}, "tasks": {}, "imports": {"h": {"lm_eval": str(folder)}}}
    validate(config, schema=str(SCHEMA))
    with pytest.raises(ValueError) as error:
        Study(config)
    assert str(error.value) == line


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from workflow_run import copy_workflow

    return copy_workflow(tmp_path_factory.mktemp("names"))


def _named_model(config, name):
    config["models"][name] = config["models"].pop("smollm2-135m-instruct")


def _named_revision(config, name):
    config["models"]["smollm2-135m-instruct"] = {"source": "local:some/model", "revisions": ["main", name]}


def _named_task(config, name):
    config["tasks"][name] = config["tasks"].pop("facts")


def _named_size(config, name):
    config["pretrain"]["sizes"][name] = next(iter(config["pretrain"]["sizes"].values()))


def _long_family(config, name):
    config["pretrain"]["family"] = name
    config["align"]["base"] = config["align"]["base"].replace("geo-neox", name)


@pytest.mark.workflow
@pytest.mark.parametrize("change, name, line", [
    (_named_model, "..", f"config: models: name '..': {RULE}"),
    (_named_revision, ".", f"config: models.smollm2-135m-instruct.revisions.1: name '.': {RULE}"),
    (_named_task, "..", f"config: tasks: name '..': {RULE}"),
    (_named_size, "../../x", f"config: pretrain.sizes: name '../../x': {RULE}"),
    (_long_family, "f" * 95,
     f"config: pretrain: model name <family>-<size>-<data> {_shown('f' * 95 + '-xs-standard')}: {RULE}"),
], ids=["model", "revision", "task", "size", "made"])
def test_the_dry_run_stops_before_any_job_on_one_line(workdir, change, name, line):
    """The cases tried on the code before: a model `..` planned results/checkpoints/../main, a task `..` was
    accepted, a size `../../x` planned 20 jobs; and a suite's model name made too long from good names."""
    from workflow_run import snakemake, write_config

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    change(config, name)
    proc = snakemake(workdir, write_config(workdir, config, "bad.yaml"), "--dry-run", check=False)
    assert proc.returncode != 0
    assert any(out.startswith(line) for out in proc.stdout.splitlines()), proc.stdout[-3000:]
    assert "Job stats" not in proc.stdout and not (workdir / "results").exists()


# ----------------------------------------------------------------------------- the path check
@pytest.fixture
def workflow_dir(tmp_path, monkeypatch):
    """A working directory with results/, a folder beside it that no writer may touch, and results/link to it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "kept.txt").write_text("kept")
    (tmp_path / "results" / "link").symlink_to(tmp_path / "outside")
    return tmp_path


@pytest.mark.parametrize("path", ["results/x.parquet", "results/a/b/c", "results/.x.tmp-1/y", "/abs/any/where"])
def test_paths_inside_results_or_absolute_pass(workflow_dir, path):
    check_inside_results(path)


@pytest.mark.parametrize("path, reason", [
    ("results", "outside"), ("results/../outside", "'..'"), ("outside/x", "outside"), ("x/results/y", "outside"),
    ("results/checkpoints/m/.", "'.'"), ("./results/x", "'.'"), ("/abs/results/../x", "'..'"),
    ("results/link/x", "outside"),
])
def test_paths_escaping_results_are_refused(workflow_dir, path, reason):
    with pytest.raises(ValueError) as error:
        check_inside_results(path)
    assert str(error.value).startswith(f"{path}: ") and reason in str(error.value) and "\n" not in str(error.value)


def test_results_may_be_a_link(tmp_path, monkeypatch):
    (tmp_path / "scratch").mkdir()
    (tmp_path / "wf").mkdir()
    (tmp_path / "wf" / "results").symlink_to(tmp_path / "scratch")
    monkeypatch.chdir(tmp_path / "wf")
    check_inside_results("results/checkpoints/m/main")


def test_atomic_path_and_write_table_refuse_a_path_outside_results(workflow_dir):
    with pytest.raises(ValueError, match="outside the workflow's results/"):
        with atomic_path("results/link/x.csv") as tmp:
            tmp.write_text("x")
    with pytest.raises(ValueError, match=r"a '\.' or '\.\.' in the path"):
        write_table(pd.DataFrame({"a": [1]}), "results/../outside/x.parquet")
    assert sorted(p.name for p in (workflow_dir / "outside").iterdir()) == ["kept.txt"]


def test_atomic_dir_refuses_the_revision_dot_that_would_swap_every_revision(workflow_dir):
    """A revision `.` of a local source made results/checkpoints/m/., which is results/checkpoints/m: the swap
    deleted the model's other revisions."""
    kept = workflow_dir / "results" / "checkpoints" / "m" / "main" / "config.json"
    kept.parent.mkdir(parents=True)
    kept.write_text("{}")
    with pytest.raises(ValueError, match=r"^results/checkpoints/m/\.: a '\.' or '\.\.' in the path"):
        with atomic_dir("results/checkpoints/m/.") as tmp:
            (tmp / "config.json").write_text("{}")
    assert kept.is_file()
    with pytest.raises(ValueError, match="outside the workflow's results/"):
        with atomic_dir("results/link/m"):
            pass
    assert sorted(p.name for p in (workflow_dir / "outside").iterdir()) == ["kept.txt"]


def test_prepare_work_dir_refuses_to_empty_a_folder_outside_results(workflow_dir):
    with pytest.raises(ValueError, match=r"^results/\.\./outside: a '\.' or '\.\.' in the path"):
        prepare_work_dir("results/../outside", {"settings": 1})
    with pytest.raises(ValueError, match="^results/link: resolves outside"):
        prepare_work_dir("results/link", {"settings": 1})
    assert (workflow_dir / "outside" / "kept.txt").read_text() == "kept"


def test_inference_shards_are_not_removed_outside_results(workflow_dir):
    shards = workflow_dir / "outside" / "t.parquet.shards"
    shards.mkdir()
    (shards / "finished-other.parquet").write_text("work of another fingerprint: removed when inside results/")
    with pytest.raises(ValueError, match=r"^results/\.\./outside/t\.parquet\.shards: a '\.' or '\.\.'"):
        Shards("results/../outside/t.parquet", {"settings": 1})
    assert (shards / "finished-other.parquet").is_file()


def test_the_reward_model_refuses_a_work_folder_outside_results_before_training(workflow_dir):
    build_tokenizer(workflow_dir / "policy")
    pd.DataFrame({"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]}).to_parquet(workflow_dir / "pairs.parquet")
    work = workflow_dir / "outside" / ".reward.work"
    work.mkdir()
    with pytest.raises(ValueError, match=r"^results/\.\./outside/\.reward\.work: a '\.' or '\.\.'"):
        train_reward_model(workflow_dir / "policy", workflow_dir / "pairs.parquet", "results/../outside/reward",
                           epochs=1, batch_size=1, lr=1e-5, max_length=16, seed=0, parallel={}, threads=1)
    assert work.is_dir()

