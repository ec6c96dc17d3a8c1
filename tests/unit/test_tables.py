"""Atomic Parquet tables: a write killed before its rename leaves no output (and its temporary file
is cleared by the next attempt), and it is flushed to disk before its rename, and the rename after; every table records
the code and libraries that made it; a safetensors file is checked against its header."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd

import workflow_scripts.tables as tables
from workflow_scripts.tables import read_provenance, read_table, write_table

KILLED_WRITE = """
import sys
import pandas as pd
from workflow_scripts.tables import write_table
write_table(pd.DataFrame({"x": range(1000)}), sys.argv[1])
"""


def test_a_write_killed_before_its_rename_publishes_nothing(tmp_path):
    out = tmp_path / "t.parquet"
    env = {**os.environ, "CALIBRATION_FAULT": "write@*/t.parquet"}
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(out)], env=env, start_new_session=True)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    (leftover,) = tmp_path.iterdir()  # the complete temporary file, never renamed
    assert leftover.name.startswith(".t.parquet.") and leftover.stat().st_size > 0
    other = tmp_path / ".u.parquet.abcdefgh.parquet"  # another table's temporary file: not this one's to clear
    other.write_bytes(b"x")
    write_table(pd.DataFrame({"x": [1, 2]}), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "t.parquet"]
    assert read_table(out)["x"].tolist() == [1, 2]


def test_the_fault_hook_waits_for_its_point_and_file(tmp_path):
    env = {**os.environ, "CALIBRATION_FAULT": "write@*/other-file"}
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(tmp_path / "t.parquet")], env=env,
                          start_new_session=True)
    assert proc.returncode == 0 and (tmp_path / "t.parquet").is_file()


def test_provenance_names_code_and_library_versions(tmp_path):
    write_table(pd.DataFrame({"x": [1]}), tmp_path / "t.parquet", provenance={"stage": "demo"})
    info = read_provenance(tmp_path / "t.parquet")
    assert info["stage"] == "demo" and info["packages"]["pyarrow"] and info["packages"]["pandas"]
    source = hashlib.sha256(open(tables.__file__, "rb").read()).hexdigest()[:16]
    assert info["code"]["modules"]["tables"] == source  # by the name below the package
    assert info["code"]["version"]


def test_equal_tables_are_equal_bytes(tmp_path):
    frame = pd.DataFrame({"x": [0.1, 0.2], "s": ["a", "b"]})
    write_table(frame, tmp_path / "a.parquet", provenance={"seed": 0})
    write_table(frame, tmp_path / "b.parquet", provenance={"seed": 0})
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def _counted_fsyncs(monkeypatch) -> list[str]:
    """The paths that os.fsync is called on from now on, in order (each call still made)."""
    synced, fsync = [], os.fsync

    def counted(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", counted)
    return synced


def test_an_atomic_file_is_flushed_to_disk_before_its_rename_and_the_rename_after(tmp_path, monkeypatch):
    synced = _counted_fsyncs(monkeypatch)
    write_table(pd.DataFrame({"x": [1]}), tmp_path / "t.parquet")
    temporary, folder = synced
    assert temporary.startswith(str(tmp_path / ".t.parquet.")) and folder == str(tmp_path)


def test_an_atomic_folder_is_flushed_to_disk_file_by_file_before_its_rename(tmp_path, monkeypatch):
    synced = _counted_fsyncs(monkeypatch)
    with tables.atomic_dir(tmp_path / "model") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.bin").write_bytes(b"a")
        (tmp / "b.json").write_text("{}")
    [folder] = {str(Path(p).parent) for p in synced if Path(p).name == "b.json"}
    assert synced == [f"{folder}/sub/a.bin", f"{folder}/sub", f"{folder}/b.json", folder, str(tmp_path)]
    assert Path(folder).name.startswith(".model.tmp-") and not Path(folder).exists()


def test_a_safetensors_file_is_checked_against_its_header(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(64), "b": torch.zeros(3)}, path)
    whole = path.read_bytes()
    assert tables.safetensors_problem(path) is None and tables.checkpoint_problem(tmp_path) is None
    path.write_bytes(whole[:-10])
    assert tables.safetensors_problem(path) == f"{len(whole) - 10:,} bytes where its header gives {len(whole):,}"
    assert tables.checkpoint_problem(tmp_path).startswith(f"{path}: ")
    path.write_bytes(whole[:8] + b"x" * (len(whole) - 8))
    assert tables.safetensors_problem(path).startswith("its header does not parse (JSONDecodeError")
    path.write_bytes(whole[:5])
    assert tables.safetensors_problem(path) == "5 bytes, too few for its header length and header"
