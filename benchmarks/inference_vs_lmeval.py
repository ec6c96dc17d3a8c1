"""Side by side, in one process: this workflow's multiple-choice inference and
lm-evaluation-harness on the same local model and the same MMLU questions (5-shot); both
against a bare batched forward pass; and the peak memory of CLM inference on a corpus and on
the same corpus four times longer.

    benchmarks/setup_lmeval.sh                                   # once: benchmarks/.venv-lmeval
    benchmarks/.venv-lmeval/bin/python benchmarks/inference_vs_lmeval.py

The harness runs its own ``mmlu`` template (its ``_default_template_yaml``, included by
path) on the fixture CSVs written as JSON lines, since its ``cais/mmlu`` download is offline here.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from workflow_scripts.inference import encode_options, load_model, score_options, shared_prefix  # noqa: E402
from workflow_scripts.tables import read_table, write_table  # noqa: E402
from workflow_scripts.tasks import prepare_task, read_mmlu_csv  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"

# Runs in a fresh interpreter: CLM inference of one corpus. Prints the rows written, the seconds,
# the resident memory once the model is loaded and has run, and the peak resident memory during
# inference (the kernel's high-water mark, reset after loading: /proc/self/clear_refs).
CLM_CHILD = """
import json, sys, time, torch
from workflow_scripts.inference import TOKEN_SCHEMA, iter_token_scores, load_model, write_row_groups
from workflow_scripts.tables import read_table
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))
data_path, model_dir, out, window, batch_size, threads = sys.argv[1:]
torch.set_num_threads(int(threads))
model, tok = load_model(model_dir, device="cpu")
data = read_table(data_path)
with torch.inference_mode():  # weights are mapped lazily: touch them all before measuring
    model(input_ids=torch.tensor([tok("Warm up.")["input_ids"]]))
loaded = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
started = time.perf_counter()
rows = write_row_groups(iter_token_scores(model, tok, data, window=int(window), batch_size=int(batch_size)),
                        out, TOKEN_SCHEMA)
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - started, "loaded": loaded,
                  "peak": status("VmHWM")}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="/tmp/smollm2", help="a Hugging Face model folder")
    parser.add_argument("--subjects", nargs="+", default=["marketing", "high_school_geography"])
    parser.add_argument("--limit", type=int, default=20, help="questions per subject")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: robust to other jobs on a small machine)")
    parser.add_argument("--clm-lines", type=int, default=16, help="WikiText-2 lines of the small CLM corpus")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each measurement (the best is kept)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-inference-"))

    data_path = work / "mmlu.parquet"
    prepare_task("mmlu", "multiple_choice", {"format": "mmlu_csv", "path": str(FIXTURES / "mmlu"),
                                             "subjects": args.subjects},
                 data_path, shots=args.shots, limit=args.limit)
    data = read_table(data_path)
    model, tok = load_model(args.model, device="cpu", dtype="float32")
    lm = _harness_model(args)
    _warm_up(model, tok)
    print(f"{len(data)} questions ({len(args.subjects)} subjects x {args.limit}), {args.shots}-shot, "
          f"{args.model}, float32 on CPU, batch {args.batch_size}, {args.threads} threads", flush=True)

    tasks = _harness_tasks(args, work)
    contexts = [encode_options(tok, p, [" " + o for o in opts])[0] for p, opts in zip(data["prompt"], data["options"])]
    seconds = {"workflow": [], "harness": [], "evaluate": [], "full": [], "cached": []}
    for _ in range(args.repeats):  # interleaved, the fastest of each kept: the machine may be busy
        started = time.perf_counter()
        ours = score_options(model, tok, data, batch_size=args.batch_size)
        seconds["workflow"].append(time.perf_counter() - started)
        theirs, harness_s, evaluate_s = _run_harness(lm, args, tasks, work)
        seconds["harness"].append(harness_s)
        seconds["evaluate"].append(evaluate_s)
        seconds["full"].append(_bare_forward_full(model, contexts, args.batch_size, tok.pad_token_id))
        seconds["cached"].append(_bare_forward_cached(model, contexts, list(data["subject"]), args.batch_size,
                                                      tok.pad_token_id))
    best = {k: min(v) for k, v in seconds.items()}

    ours_lp = np.array(ours["option_logprobs"].tolist())
    theirs_lp = np.array([theirs[i] for i in ours["item_id"]])
    gold = ours["gold"].to_numpy()
    print(f"  this workflow (score_options)             {best['workflow']:7.1f} s")
    print(f"  lm-evaluation-harness (loglikelihood)     {best['harness']:7.1f} s   "
          f"(simple_evaluate {best['evaluate']:.1f} s)")
    print(f"  speed-up over lm-evaluation-harness       {best['harness'] / best['workflow']:7.1f} x")
    print(f"  max |difference| of per-option log-probs  {np.abs(ours_lp - theirs_lp).max():9.2e}")
    print(f"  accuracy: workflow {np.mean(ours_lp.argmax(1) == gold):.3f}, "
          f"lm-evaluation-harness {np.mean(theirs_lp.argmax(1) == gold):.3f} "
          f"(same choice on {np.sum(ours_lp.argmax(1) == theirs_lp.argmax(1))}/{len(gold)})")
    for key, what in (("full", "the full prompts"), ("cached", "prefixes + suffixes")):
        print(f"  bare forward over {what:<23} {best[key]:7.1f} s   workflow / it = "
              f"{best['workflow'] / best[key]:.2f}")
    print(f"  (fastest of {args.repeats} interleaved runs; all runs: "
          + ", ".join(f"{k} {' '.join(f'{x:.1f}' for x in v)}" for k, v in seconds.items()) + ")", flush=True)
    del model, lm

    small, large = _clm_memory(args, work)
    print(f"CLM inference ({args.clm_lines} WikiText-2 lines, window {args.window}, batch {args.batch_size}), "
          f"peak resident memory during inference:")
    for name, run in (("corpus", small), ("corpus x 4", large)):
        print(f"  {name:<11} {run['rows']:6d} tokens in {run['seconds']:5.1f} s: peak {run['peak'] / 2**20:5.0f} MiB "
              f"(model loaded and run once: {run['loaded'] / 2**20:.0f} MiB; peaks of {args.repeats} runs: "
              f"{', '.join(f'{peak / 2**20:.0f}' for peak in run['peaks'])})")
    print(f"  peak growth for a 4x corpus: {100 * (large['peak'] / small['peak'] - 1):+.1f}%")


def _harness_model(args):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=args.model, dtype="float32", device="cpu", batch_size=args.batch_size)


def _harness_tasks(args, work: Path) -> dict[str, str]:
    """Task YAMLs (name -> subject) that include the harness's own mmlu template, on the fixture data."""
    import lm_eval

    template = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default" / "_default_template_yaml"
    tasks = {}
    for subject in args.subjects:
        files = {}
        for split, rows in (("dev", None), ("test", args.limit)):
            questions = read_mmlu_csv(FIXTURES / "mmlu" / split / f"{subject}_{split}.csv", subject)[:rows]
            files[split] = str(work / f"{subject}_{split}.jsonl")
            Path(files[split]).write_text("".join(json.dumps({"question": q.question, "choices": q.choices,
                                                              "answer": q.gold}) + "\n" for q in questions))
        name = f"bench_mmlu_{subject}"
        config = {"include": str(template), "task": name, "dataset_path": "json",
                  "dataset_kwargs": {"data_files": files},
                  "description": f"The following are multiple choice questions (with answers) about "
                                 f"{subject.replace('_', ' ')}.\n\n"}
        (work / f"{name}.yaml").write_text(json.dumps(config))  # JSON is YAML
        tasks[name] = subject
    return tasks


def _run_harness(lm, args, tasks: dict[str, str], work: Path):
    """Per-option log-probabilities by item id, the time in loglikelihood and in simple_evaluate."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    spent = []
    loglikelihood = lm.loglikelihood

    def timed(*a, **k):
        started = time.perf_counter()
        result = loglikelihood(*a, **k)
        spent.append(time.perf_counter() - started)
        return result

    lm.loglikelihood = timed
    started = time.perf_counter()
    results = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=args.shots, log_samples=True,
                                      bootstrap_iters=0, task_manager=TaskManager(include_path=str(work)))
    evaluate_s = time.perf_counter() - started
    logprobs = {f"{subject}/{s['doc_id']}": [float(r[0]) for r in s["filtered_resps"]]
                for name, subject in tasks.items() for s in results["samples"][name]}
    return logprobs, sum(spent), evaluate_s


def _warm_up(model, tok) -> None:
    with torch.inference_mode():
        model(input_ids=torch.tensor([tok("Warm up the kernels once.")["input_ids"]]))


def _left_padded(sequences, pad_id):
    width = max(map(len, sequences))
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in sequences])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _bare_forward_full(model, contexts, batch_size, pad_id) -> float:
    """Seconds of batched forward passes over the whole prompts (sorted, last position's logits)."""
    ordered = sorted(contexts, key=len, reverse=True)
    batches = [_left_padded(ordered[i:i + batch_size], pad_id) for i in range(0, len(ordered), batch_size)]
    started = time.perf_counter()
    with torch.inference_mode():
        for ids, mask, positions in batches:
            model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)
    return time.perf_counter() - started


def _bare_forward_cached(model, contexts, subjects, batch_size, pad_id) -> float:
    """Seconds of the forward passes the prefix cache leaves: each subject's prefix once, then
    its questions' suffixes in batches continuing that cache."""
    from transformers import DynamicCache

    groups = {}
    for context, subject in zip(contexts, subjects):
        groups.setdefault(subject, []).append(context)
    prepared = []
    for group in groups.values():
        prefix = shared_prefix(group)
        suffixes = sorted((c[len(prefix):] for c in group), key=len, reverse=True)
        prepared.append((prefix, [_left_padded(suffixes[i:i + batch_size], pad_id)
                                  for i in range(0, len(suffixes), batch_size)]))
    started = time.perf_counter()
    with torch.inference_mode():
        for prefix, batches in prepared:
            cache = DynamicCache(config=model.config)
            model(input_ids=torch.tensor([prefix]), cache=cache, use_cache=True, logits_to_keep=1)
            for ids, mask, positions in batches:
                batch_cache = DynamicCache(config=model.config)
                for layer, (keys, values, *_) in enumerate(cache):
                    batch_cache.update(keys.expand(len(ids), -1, -1, -1), values.expand(len(ids), -1, -1, -1), layer)
                mask = torch.cat([torch.ones(len(ids), len(prefix), dtype=mask.dtype), mask], dim=1)
                model(input_ids=ids, attention_mask=mask, position_ids=positions + len(prefix), cache=batch_cache,
                      use_cache=True, logits_to_keep=1)
    return time.perf_counter() - started


def _clm_memory(args, work: Path) -> list[dict]:
    """CLM inference of a WikiText-2 corpus and of the same corpus four times over, each in fresh processes."""
    lines = [line.strip() for line in (FIXTURES / "wikitext-2-raw" / "wiki.test.raw").read_text().splitlines()]
    texts = [line for line in lines if line and not line.startswith("=")][:args.clm_lines]
    runs = []
    for copies in (1, 4):
        corpus = pd.DataFrame({"item_id": [f"{c}/{n}" for c in range(copies) for n in range(len(texts))],
                               "text": texts * copies})
        write_table(corpus, work / f"clm{copies}.parquet")
        tries = []
        for _ in range(args.repeats):  # the lowest peak of a few: the C heap's layout varies by run
            out = subprocess.run([sys.executable, "-c", CLM_CHILD, str(work / f"clm{copies}.parquet"), args.model,
                                  str(work / f"clm{copies}.raw.parquet"), str(args.window), str(args.batch_size),
                                  str(args.threads)], check=True, capture_output=True, text=True).stdout
            tries.append(json.loads(out.strip().splitlines()[-1]))
        runs.append(min(tries, key=lambda run: run["peak"]) | {"peaks": [run["peak"] for run in tries]})
    return runs


if __name__ == "__main__":
    main()
