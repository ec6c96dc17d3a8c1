"""A rule depends on exactly the code it runs: its `code` input names the modules its script imports, and
tables.module_files follows their imports (the files Snakemake then watches), read from the sources alone."""
from __future__ import annotations

import ast
import re
import shutil

import pytest
from conftest import ROOT

from workflow_scripts.plots.registry import FIGURES
from workflow_scripts.tables import NOT_RESULT_CODE, module_files, module_sources

RULE = re.compile(r"^ *(?:rule (\w+)|use rule \w+ as (\w+) with):", re.M)


def rule_blocks() -> dict[str, str]:
    """Rule name -> the text of its declaration, for every rule of rules/*.smk written out by name."""
    blocks = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        text = smk.read_text()
        starts = list(RULE.finditer(text))
        for match, end in zip(starts, [*starts[1:], None]):
            blocks[match[1] or match[2]] = text[match.start():end.start() if end else None]
    return blocks


def script_imports(script: str) -> set[str]:
    """The workflow_scripts modules a rule script imports (those of NOT_RESULT_CODE left out)."""
    tree = ast.parse((ROOT / "rules" / "scripts" / script).read_text())
    modules = {node.module.partition(".")[2] for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workflow_scripts.")}
    return {m for m in modules if m not in NOT_RESULT_CODE}


def test_every_rule_names_the_modules_its_script_imports():
    blocks = rule_blocks()
    scripts = {}
    for name, block in blocks.items():
        code = re.search(r"code=code\(([^)]*)\)", block)
        assert code, f"rule {name} has no code input"
        modules = set(re.findall(r'"([\w.]+)"', code[1]))
        if script := re.search(r'script:\s*"scripts/(\w+\.py)"', block):
            scripts[name] = script[1]
            assert modules == script_imports(script[1]), name
        else:  # a `use rule ... with:` keeps its parent's script
            parent = re.search(rf"use rule (\w+) as {name} with", block)[1]
            assert modules == script_imports(scripts[parent]), name
    assert {"infer", "extract_confidence", "recalibrate", "score", "summarize", "compare", "tune"} <= set(scripts)
    for figure in FIGURES:  # figures.smk makes its rules in a loop: the registry and the figure's module
        assert script_imports("plot.py") == {"plots.registry"}
        assert (ROOT / "workflow_scripts" / "plots" / f"{figure.module}.py").is_file(), figure.name


def test_the_closure_follows_imports_into_packages_and_leaves_out_what_never_changes_a_result():
    confidence = module_files("workflow_scripts.confidence")
    assert "metrics" in confidence  # confidence imports metrics.option_indices: an edit of metrics reruns it
    assert "faults" not in module_files("workflow_scripts.inference") and set(NOT_RESULT_CODE) == {"faults", "runlog"}
    summary = module_files("workflow_scripts.summary")
    assert "order" in summary and not any(name.startswith("plots") for name in summary)  # no figure code
    reliability = module_files("workflow_scripts.plots.reliability")
    assert {"plots", "plots.reliability", "plots.style", "order"} <= set(reliability)
    assert "plots.pretraining" not in reliability
    tasks = module_files("workflow_scripts.tasks")
    assert {"tasks", "tasks.registry", "tasks.multiple_choice", "kinds"} <= set(tasks)
    assert all(path.is_file() for path in tasks.values())


def test_module_files_reads_a_copy_of_the_package_where_it_is_told(tmp_path):
    """The rules read the closure in the workflow's own folder (a scratch copy's edits count there)."""
    copy = tmp_path / "workflow_scripts"
    shutil.copytree(ROOT / "workflow_scripts", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "extra.py").write_text("")
    (copy / "metrics.py").write_text((copy / "metrics.py").read_text() + "\nfrom . import extra\n")
    files = module_files("workflow_scripts.recalibrate", copy)
    assert files["extra"] == copy / "extra.py" and files["metrics"] == copy / "metrics.py"
    assert "extra" not in module_files("workflow_scripts.recalibrate")
    with pytest.raises(ModuleNotFoundError, match="no module workflow_scripts.missing"):
        module_files("workflow_scripts.missing", copy)
    assert module_sources("workflow_scripts.recalibrate").keys() == module_files("workflow_scripts.recalibrate").keys()
