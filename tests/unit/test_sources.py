"""The fetch stage on local sources, a local Hugging Face cache (the real hub code, offline) and GGUF errors."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from workflow_scripts.sources import SourceError, fetch_checkpoint, parse_source


def _weights(folder):
    return load_file(str(next(folder.glob("*.safetensors"))))


def _same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("bad", ["pythia", "s3:bucket/model", "hf:", "local"])
def test_unknown_sources_are_rejected(bad):
    with pytest.raises(SourceError, match="expected one of hf:"):
        parse_source(bad)


def test_local_folder_and_revision_subfolders(tiny_model_dir, tmp_path):
    suite = tmp_path / "suite"
    shutil.copytree(tiny_model_dir, suite / "step8")
    fetch_checkpoint(f"local:{tiny_model_dir}", "main", tmp_path / "out" / "main")
    fetch_checkpoint(f"local:{suite}", "step8", tmp_path / "out" / "step8")
    for rev in ("main", "step8"):
        out = tmp_path / "out" / rev
        assert _same_weights(out, tiny_model_dir)
        assert (out / "tokenizer.json").is_file()
        assert json.loads((out / "provenance.json").read_text())["revision"] == rev
    with pytest.raises(SourceError, match=r"revision 'step9' not found.*available revisions: \['step8'\]"):
        fetch_checkpoint(f"local:{suite}", "step9", tmp_path / "out" / "step9")
    assert not (tmp_path / "out" / "step9").exists()
    assert not list((tmp_path / "out").glob(".*tmp*"))  # no half-built folder left behind


def test_missing_local_folder(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        fetch_checkpoint(f"local:{tmp_path / 'nothing'}", "main", tmp_path / "out")


def test_legacy_bin_weights_are_converted_to_safetensors(tiny_model_dir, tmp_path):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, legacy / f.name)
    torch.save(_weights(tiny_model_dir), legacy / "pytorch_model.bin")
    fetch_checkpoint(f"local:{legacy}", "main", tmp_path / "out")
    assert _same_weights(tmp_path / "out", tiny_model_dir)


def _hub_cache(root, repo_id, revisions, model_dir):
    """A Hugging Face cache laid out as huggingface_hub writes it: refs/<revision> -> snapshots/<commit>."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    for revision, commit in revisions.items():
        shutil.copytree(model_dir, repo / "snapshots" / commit, dirs_exist_ok=True)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / revision).write_text(commit)


def test_hub_source_resolves_revision_to_commit_through_the_cache(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    _hub_cache(tmp_path / "cache", "org/tiny", {"step1000": commit}, tiny_model_dir)
    fetch_checkpoint("hf:org/tiny", "step1000", tmp_path / "out")
    assert _same_weights(tmp_path / "out", tiny_model_dir)
    assert json.loads((tmp_path / "out" / "provenance.json").read_text())["resolved_commit"] == commit
    with pytest.raises(SourceError, match=r"hf:org/tiny at revision 'step2000'.*unreachable"):
        fetch_checkpoint("hf:org/tiny", "step2000", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_gguf_errors_name_the_source(tmp_path):
    with pytest.raises(SourceError, match="not installed"):
        fetch_checkpoint("gguf-pkg:no-such-package-xyz/model.gguf", "main", tmp_path / "a")
    with pytest.raises(SourceError, match="has no file 'missing.gguf'"):
        fetch_checkpoint("gguf-pkg:pytest/missing.gguf", "main", tmp_path / "b")
    with pytest.raises(SourceError, match="does not exist"):
        fetch_checkpoint(f"gguf:{tmp_path / 'none.gguf'}", "main", tmp_path / "c")
    with pytest.raises(SourceError, match="only the revision 'main'"):
        fetch_checkpoint(f"gguf:{tmp_path / 'none.gguf'}", "step1", tmp_path / "d")
