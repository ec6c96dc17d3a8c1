"""The import stage: calibration of existing lm-evaluation-harness runs, without running a model.

An ``lm_eval --log_samples`` run writes, per task, ``samples_<task>_<date>.jsonl`` (one line per
document: its requests' ``arguments`` and their log-likelihoods in ``filtered_resps``) next to
``results_<date>.json`` (the harness's version, model arguments and each task's config). For a
``multiple_choice`` task, every document's requests are (context, target_delimiter + choice)
pairs: this module rebuilds from them the task table and the inference table of this workflow's
contract, so that the continuation confidence methods (``continuation_sum`` is the harness's
``acc``, ``continuation_norm_chars`` its ``acc_norm``), metrics and figures run unchanged. The
sample files hold no token counts nor per-token log-probabilities, so the methods that need them
do not apply.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from .inference import OPTION_SCHEMA, write_row_groups
from .names import check_name
from .tables import file_digest, write_table

SAMPLES = re.compile(r"samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[0-9.:-]+)\.jsonl")
IMPORTED_METHODS = ["continuation_sum", "continuation_norm_chars"]  # what the sample files support


class HarnessImportError(ValueError):
    """A harness output that cannot be imported; the message names the file and the line."""


def find_samples(folder, tasks: list[str] | None = None) -> dict[str, Path]:
    """The samples file of each task in an lm_eval output folder (searched below it; the newest
    run of a task where there are several), limited to ``tasks`` where given."""
    runs = sorted((match["date"], match["task"], path) for path in Path(folder).rglob("samples_*.jsonl")
                  if (match := SAMPLES.fullmatch(path.name)))
    found = {task: path for _, task, path in runs}  # the newest of a task last
    if not found:
        raise HarnessImportError(f"{folder}: no samples_<task>_<date>.jsonl files (run lm_eval with --log_samples "
                           "and --output_path)")
    missing = sorted(set(tasks or []) - set(found))
    if missing:
        raise HarnessImportError(f"{folder}: no samples files of task(s) {missing}; found: {sorted(found)}")
    for task in tasks or found:  # a task name reaches the paths of its tables
        try:
            check_name("imported task name", task)
        except ValueError as error:
            raise HarnessImportError(f"{found[task]}: {error}") from None
    return {task: found[task] for task in (tasks or sorted(found))}


def run_results(samples: Path) -> dict:
    """The harness's results JSON written with a samples file (same folder, same date)."""
    path = samples.with_name(f"results_{SAMPLES.fullmatch(samples.name)['date']}.json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise HarnessImportError(f"{samples}: cannot read the results file of its run, {path.name}: {error}") from error


def output_type(samples: Path) -> str:
    """The task's output type, from its run's results JSON."""
    task = SAMPLES.fullmatch(samples.name)["task"]
    config = run_results(samples).get("configs", {}).get(task)
    if not config or "output_type" not in config:
        raise HarnessImportError(f"{samples}: the results file of its run has no config of task {task!r}")
    return config["output_type"]


def import_samples(samples, *, task: str, data_out=None, inference_out=None) -> None:
    """Write the task table (``data_out``) and/or the inference table (``inference_out``) of one
    multiple-choice samples file."""
    samples = Path(samples)
    results = run_results(samples)
    config = results["configs"][task]
    if config.get("output_type") != "multiple_choice":
        raise HarnessImportError(f"{samples}: task {task!r} is {config.get('output_type')!r}, not multiple_choice")
    delimiter = config.get("target_delimiter", " ")
    items, raw, first_line = [], [], {}
    with open(samples, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            item, scores = _document(samples, number, line, task, delimiter)
            doc_id = item["item_id"].removeprefix(f"{task}/")
            if doc_id in first_line:
                raise HarnessImportError(f"{samples}: line {number}: doc_id {doc_id} is also the doc_id of line "
                                         f"{first_line[doc_id]}: each document must appear once (two runs' samples "
                                         "in one file?)")
            first_line[doc_id] = number
            items.append(item)
            raw.append({"item_id": item["item_id"], "subject": task, "option_logprobs": scores,
                        "option_token_counts": None, "option_min_logprobs": None, "letter_mass": math.nan,
                        "gold": item["gold"], "truncated": None})
    if not items:
        raise HarnessImportError(f"{samples}: no documents")
    provenance = {"stage": "import", "task": task, "samples": str(samples),
                  "samples_sha256": file_digest(samples),
                  "lm_eval_version": results.get("lm_eval_version"), "harness_config": results.get("config"),
                  "task_config": config}
    if data_out is not None:
        write_table(pd.DataFrame(items), data_out, provenance=provenance)
    if inference_out is not None:
        write_row_groups([pd.DataFrame(raw)], inference_out, OPTION_SCHEMA, provenance=provenance)


def _document(path: Path, number: int, line: str, task: str, delimiter: str) -> tuple[dict, list[float]]:
    """One samples line as a task-table row and its options' log-likelihoods."""
    where = f"{path}: line {number}"
    try:
        sample = json.loads(line)
        requests = [sample["arguments"][key] for key in sorted(sample["arguments"], key=_request_index)]
        contexts = {request["arg_0"] for request in requests}
        options = [request["arg_1"] for request in requests]
        scores = [float(response[0]) for response in sample["filtered_resps"]]
        target, doc_id = sample["target"], sample["doc_id"]
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise HarnessImportError(f"{where}: not a multiple-choice sample of lm-evaluation-harness "
                           f"(arguments, filtered_resps, target, doc_id): {type(error).__name__}: {error}") from None
    if len(contexts) != 1:
        raise HarnessImportError(f"{where}: the requests of document {doc_id} have {len(contexts)} different contexts "
                           "(a task with the options in the context, such as a multiple-input task): not importable")
    if not all(isinstance(o, str) for o in options) or len(scores) != len(options) or len(options) < 2:
        raise HarnessImportError(f"{where}: expected 2 or more (context, continuation) requests with one "
                           f"log-likelihood each, got {len(options)} requests and {len(scores)} log-likelihoods")
    choices = [o[len(delimiter):] if o.startswith(delimiter) else o for o in options]
    gold = int(target) if str(target).isdigit() else (choices.index(target) if target in choices else None)
    if gold is None or not 0 <= gold < len(options):
        raise HarnessImportError(f"{where}: target {target!r} is neither an option index nor an option text")
    return ({"item_id": f"{task}/{doc_id}", "subject": task, "question": "", "prompt": contexts.pop(),
             "choices": choices, "options": options, "gold": gold, "scoring": "continuation"}, scores)


def _request_index(key: str) -> int:
    """``gen_args_<i>`` -> i: the requests in the order of the task's choices."""
    return int(key.rsplit("_", 1)[1])
