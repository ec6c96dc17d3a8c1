"""Calibration of existing lm-evaluation-harness runs: the harness itself runs a tiny model on a
small multiple-choice task built here (and a generation task, which is skipped), with
--log_samples; the workflow imports its samples and must give the harness's acc and acc_norm, and
an ECE equal to one recomputed from the samples by hand."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from workflow_scripts.imports import HarnessImportError, find_samples, import_samples


def _samples(run: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in find_samples(run)[task].read_text().splitlines()]


def _copy_run(run: Path, dest: Path, task: str = "capitals_mc") -> Path:
    """The samples file of `task` and its results file, copied to `dest`; returns the samples copy."""
    samples = find_samples(run)[task]
    dest.mkdir(parents=True, exist_ok=True)
    for path in (samples, *samples.parent.glob("results_*.json")):
        shutil.copy(path, dest / path.name)
    return dest / samples.name


def test_a_folder_without_samples_is_one_clear_error(tmp_path):
    with pytest.raises(HarnessImportError, match="no samples_<task>_<date>.jsonl files .*--log_samples"):
        find_samples(tmp_path)


def test_a_task_not_in_the_run_is_named(harness_run):
    with pytest.raises(HarnessImportError, match=r"no samples files of task\(s\) \['mmlu'\]"):
        find_samples(harness_run, ["mmlu"])


@pytest.mark.parametrize("change,message", [
    (lambda s: "not json", r"line 2: not a multiple-choice sample"),
    (lambda s: json.dumps({k: v for k, v in s.items() if k != "filtered_resps"}), r"line 2: not a multiple-choice"),
    (lambda s: json.dumps({**s, "arguments": {**s["arguments"],
                                              "gen_args_1": {**s["arguments"]["gen_args_1"], "arg_0": "other"}}}),
     r"line 2: the requests of document \d+ have 2 different contexts"),
    (lambda s: json.dumps({**s, "target": "99"}), r"line 2: target '99' is neither an option index"),
])
def test_a_samples_file_of_another_shape_names_the_file_and_line(harness_run, tmp_path, change, message):
    samples = _copy_run(harness_run, tmp_path / "run")
    lines = samples.read_text().splitlines()
    lines[1] = change(json.loads(lines[1]))
    samples.write_text("\n".join(lines) + "\n")
    with pytest.raises(HarnessImportError, match=message):
        import_samples(samples, task="capitals_mc", data_out=tmp_path / "data.parquet")
    assert not (tmp_path / "data.parquet").exists()


def test_a_doc_id_twice_is_an_error_naming_the_file_and_the_doc_id(harness_run, tmp_path):
    """Two lines with one doc_id (e.g. two runs' samples in one file) would pair items with another line's choices:
    the import stops, naming the file, the line, the doc_id and the line it first appeared on; nothing is written."""
    samples = _copy_run(harness_run, tmp_path / "run")
    lines = samples.read_text().splitlines()
    first = json.loads(lines[1])
    lines[4] = json.dumps({**json.loads(lines[4]), "doc_id": first["doc_id"]})
    samples.write_text("\n".join(lines) + "\n")
    with pytest.raises(HarnessImportError) as error:
        import_samples(samples, task="capitals_mc", data_out=tmp_path / "data.parquet",
                       inference_out=tmp_path / "raw.parquet")
    assert str(error.value) == (f"{samples}: line 5: doc_id {first['doc_id']} is also the doc_id of line 2: each "
                                "document must appear once (two runs' samples in one file?)")
    assert not (tmp_path / "data.parquet").exists() and not (tmp_path / "raw.parquet").exists()
