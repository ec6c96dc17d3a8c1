"""config/README.md documents exactly the keys of config/schema.yaml, with the schema's defaults.

A key is a dotted path from the top of the config (``inference.batch_size``); ``<name>`` stands for
every level whose keys are names the config chooses (models, tasks, imports, pretrain sizes,
instruction sets, tuning methods): ``tasks.<name>.dataset.format``. Object-valued keys count
(``models.<name>.inference``), as do the keys of a ``$ref`` at each place it is used and of the
``allOf``/``oneOf``/``then``/``else`` branches (``tasks.<name>.window_mode.stride``).

The doc documents a key as a row of a Markdown table whose header's first cell is ``key``: the row's
first cell holds the key, or several keys, each in backticks; its second cell is the default, whose
first code span must read (as YAML) as the schema's default where the schema has one.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "config" / "schema.yaml").is_file())
NAME = "<name>"
BRANCH_LISTS = ("allOf", "anyOf", "oneOf")  # keywords holding a list of subschemas at the same level
BRANCHES = ("then", "else")  # keywords holding one
NO_DEFAULT = object()


def schema_keys(node: dict, defs: dict, prefix: str = "") -> dict[str, object]:
    """Every key below ``node`` as dotted path -> its default (NO_DEFAULT where the schema gives none)."""
    if "$ref" in node:
        node = {**defs[node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}
    keys: dict[str, object] = {}

    def merge(found: dict[str, object]) -> None:
        for path, default in found.items():
            if default is NO_DEFAULT:
                keys.setdefault(path, NO_DEFAULT)
            else:
                assert keys.get(path, NO_DEFAULT) in (NO_DEFAULT, default), f"two defaults of {path} in the schema"
                keys[path] = default

    for name, child in node.get("properties", {}).items():
        merge({prefix + name: child.get("default", NO_DEFAULT)})
        merge(schema_keys(child, defs, f"{prefix}{name}."))
    if isinstance(node.get("additionalProperties"), dict):
        merge(schema_keys(node["additionalProperties"], defs, f"{prefix}{NAME}."))
    branches = [b for word in BRANCH_LISTS for b in node.get(word, [])] + [node[w] for w in BRANCHES if w in node]
    for branch in branches:
        merge(schema_keys(branch, defs, prefix))
    return keys


def documented_keys(markdown: str) -> dict[str, str]:
    """The keys of the doc's key tables -> the default cell of their row; a key documented twice is an error."""
    keys: dict[str, str] = {}
    in_key_table = False
    for line in markdown.splitlines():
        if not line.startswith("|"):
            in_key_table = False
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if cells[0] == "key":
            in_key_table = True
        elif in_key_table and not set(cells[0]) <= set("-: "):
            named = re.findall(r"`([^`]+)`", cells[0])
            assert named, f"a key row without a key in backticks: {line}"
            for key in named:
                assert key not in keys, f"{key} is documented twice"
                keys[key] = cells[1] if len(cells) > 1 else ""
    return keys


@pytest.fixture(scope="module")
def schema():
    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    return schema_keys(schema, schema.get("$defs", {}))


@pytest.fixture(scope="module")
def documented():
    return documented_keys((ROOT / "config" / "README.md").read_text())


def test_every_schema_key_is_documented(schema, documented):
    assert sorted(set(schema) - set(documented)) == []


def test_no_documented_key_is_missing_from_the_schema(schema, documented):
    assert sorted(set(documented) - set(schema)) == []


def test_documented_defaults_are_the_schema_defaults(schema, documented):
    wrong = {}
    for key, default in schema.items():
        if default is NO_DEFAULT or key not in documented:
            continue
        spans = re.findall(r"`([^`]+)`", documented[key])
        written = yaml.safe_load(spans[0]) if spans else NO_DEFAULT
        if written != default:
            wrong[key] = (documented[key], default)
    assert wrong == {}


def test_the_walk_finds_keys_at_every_kind_of_level(schema):
    # a fixed point per construct, so that a walk that misses one cannot pass on an empty doc
    assert schema["inference.batch_size"] == 8
    assert "tasks.<name>.dataset.format" in schema  # additionalProperties
    assert schema["tasks.<name>.window"] == 1024  # a default given in an allOf/then branch
    assert "tasks.<name>.window_mode.stride" in schema  # oneOf
    assert schema["align.parallel.processes"] == 1  # $ref, with defaults beside it
    assert "align.preference.dpo.resources.runtime" in schema  # $ref
    assert schema["models.<name>.inference"] is NO_DEFAULT
