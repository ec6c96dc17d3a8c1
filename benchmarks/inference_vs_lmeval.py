r"""Side by side, in one process, with lm-evaluation-harness on the same local model and the
same data, for every request type of this workflow:

- ``mc``: multiple choice, the harness's ``loglikelihood`` (its own ``mmlu`` template, 5-shot,
  through ``simple_evaluate``) against ``score_options``, both also against bare batched
  forward passes;
- ``clm``: the harness's ``loglikelihood_rolling`` (HFLM ``max_length`` = the workflow's
  window) against ``score_tokens`` (``window_mode="rolling"``), per-document log-likelihood
  (the sum of ``target_logprob``) on WikiText-2 articles longer than the window; the harness
  also with ``softmax_dtype="float64"``, the exact log-softmax of the same float32 logits, which
  this workflow computes (the harness's default float32 log-softmax is off by about +7e-6 nats
  per token on CPU);
- ``generation``: the harness's ``generate_until`` (greedy, ``until`` = the stop strings,
  ``max_gen_toks`` = ``max_new_tokens``) against ``generate_answers``, on the prompts of the
  workflow's geonames task; the workflow's ``generated`` is cut at the stop strings as the
  harness cuts its own;
- ``continuation``: multiple choice scored by option text (the harness's ``mmlu_continuation``
  template, 3-shot: each choice's continuation is " " + its text), the harness's
  ``loglikelihood`` against ``score_options`` fed the harness's own contexts and continuations
  (its logged ``arguments``);
- ``truthfulqa``: TruthfulQA MC1, the harness's ``truthfulqa_mc1`` on the fixture
  ``mc_task.json`` (written in the ``truthful_qa`` "multiple_choice" layout), its per-sample
  ``acc`` against the workflow's ``continuation_sum`` rule (argmax of ``option_logprobs``) on the
  harness's own contexts and continuations; and, where ``prepare_task`` has the
  ``truthfulqa_mc`` format, the workflow's own prompts and options against the harness's;
- ``memory``: the peak resident memory of CLM inference on a corpus and on the same corpus four
  times longer (fresh processes).

    benchmarks/setup_lmeval.sh                                   # once: benchmarks/.venv-lmeval
    benchmarks/.venv-lmeval/bin/python benchmarks/inference_vs_lmeval.py \
        [--kinds mc continuation truthfulqa clm generation memory]

The harness's request methods are called directly with ``Instance`` objects for ``clm`` and
``generation``; ``mc`` runs its ``mmlu`` template (``_default_template_yaml``, included by path)
on the fixture CSVs written as JSON lines, since its ``cais/mmlu`` download is offline here, and
``continuation`` its ``_continuation_template_yaml`` the same way; ``truthfulqa`` includes its
``truthfulqa_mc1.yaml`` by path on the fixture written as JSON lines.
Times are the fastest of ``--repeats`` interleaved runs of each side.
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

from workflow_scripts.inference.clm import score_tokens  # noqa: E402
from workflow_scripts.inference.generation import generate_answers  # noqa: E402
from workflow_scripts.inference.multiple_choice import encode_options, score_options, shared_prefix  # noqa: E402
from workflow_scripts.inference.transformers_backend import TransformersBackend, TransformersCodec, load_model
from workflow_scripts.tables import read_table, write_table  # noqa: E402
from workflow_scripts.tasks import prepare_task, read_mmlu_csv  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"

# Runs in a fresh interpreter: CLM inference of one corpus. Prints the rows written, the seconds,
# the resident memory once the model is loaded and has run, and the peak resident memory during
# inference (the kernel's high-water mark, reset after loading: /proc/self/clear_refs).
CLM_CHILD = """
import json, sys, time, torch
from workflow_scripts.inference import TOKEN_SCHEMA, write_row_groups
from workflow_scripts.inference.clm import iter_token_scores
from workflow_scripts.inference.transformers_backend import TransformersBackend, load_model
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
rows = write_row_groups(iter_token_scores(TransformersBackend(model, tok), data, window=int(window),
                                          batch_size=int(batch_size)), out, TOKEN_SCHEMA)
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - started, "loaded": loaded,
                  "peak": status("VmHWM")}))
"""


KINDS = ("mc", "continuation", "truthfulqa", "clm", "generation", "memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="what to run (default: all)")
    parser.add_argument("--model", default="/tmp/smollm2", help="a Hugging Face model folder")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: robust to other jobs on a small machine)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each measurement (the best is kept)")
    parser.add_argument("--subjects", nargs="+", default=["marketing", "high_school_geography"],
                        help="mc, continuation: MMLU subjects")
    parser.add_argument("--limit", type=int, default=20, help="mc, continuation: questions per subject")
    parser.add_argument("--shots", type=int, default=5, help="mc: few-shot examples")
    parser.add_argument("--continuation-shots", type=int, default=3, help="continuation: few-shot examples")
    parser.add_argument("--truthfulqa-limit", type=int, default=100,
                        help="truthfulqa: the first N questions of mc_task.json (0: all 817)")
    parser.add_argument("--truthfulqa-repeats", type=int, default=1,
                        help="truthfulqa: runs of each side (its timing is secondary; each harness run takes minutes)")
    parser.add_argument("--window", type=int, default=256,
                        help="clm, memory: the workflow's window and the harness's max_length")
    parser.add_argument("--clm-docs", type=int, default=3, help="clm: WikiText-2 articles (documents)")
    parser.add_argument("--clm-lines", type=int, default=16, help="memory: WikiText-2 lines of the small corpus")
    parser.add_argument("--facts", type=int, default=10, help="generation: geonames facts per relation")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="generation: max_new_tokens = max_gen_toks")
    parser.add_argument("--stop", nargs="+", default=["\n"], help="generation: stop strings = until")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    print(f"{args.model}, float32 on CPU, batch {args.batch_size}, {args.threads} threads, "
          f"fastest of {args.repeats} interleaved runs", flush=True)

    model, tok = load_model(args.model, device="cpu", dtype="float32")
    _warm_up(model, tok)
    table = []
    for kind, compare in (("mc", _compare_mc), ("continuation", _compare_continuation),
                          ("truthfulqa", _compare_truthfulqa), ("clm", _compare_clm),
                          ("generation", _compare_generation)):
        if kind in args.kinds:
            table.append(compare(model, tok, args, work))
    if table:
        print(f"\n{'kind':<12} {'request type':<22} {'items':>9} {'workflow s':>10} {'harness s':>10} "
              f"{'harness / workflow':>18}  largest difference")
        for row in table:
            print(f"{row['kind']:<12} {row['request']:<22} {row['items']:>9} {row['workflow']:10.1f} "
                  f"{row['harness']:10.1f} {row['harness'] / row['workflow']:17.1f}x  {row['difference']}")
        print(flush=True)
    del model
    if "memory" in args.kinds:
        _report_memory(args, work)


def _timed(function, *a, **k):
    started = time.perf_counter()
    result = function(*a, **k)
    return result, time.perf_counter() - started


# ----------------------------------------------------------------------------- multiple choice
def _compare_mc(model, tok, args, work: Path) -> dict:
    data_path = work / "mmlu.parquet"
    prepare_task("mmlu", "multiple_choice", {"format": "mmlu_csv", "path": str(FIXTURES / "mmlu"),
                                             "subjects": args.subjects},
                 data_path, shots=args.shots, limit=args.limit)
    data = read_table(data_path)
    data = data[data["split"] == "test"].reset_index(drop=True)  # the harness scores the test rows only
    # The harness at its default max_length (the model's context): 5-shot prompts exceed the CLM window.
    lm = _harness_model(args, max_length=None)
    print(f"\nmultiple choice: {len(data)} questions ({len(args.subjects)} subjects x {args.limit}), "
          f"{args.shots}-shot", flush=True)

    tasks = _harness_tasks(args, work)
    contexts = [encode_options(TransformersCodec(tok), p, list(opts))[0]
                for p, opts in zip(data["prompt"], data["options"])]
    seconds = {"workflow": [], "harness": [], "evaluate": [], "full": [], "cached": []}
    for _ in range(args.repeats):  # interleaved, the fastest of each kept: the machine may be busy
        ours, spent = _timed(score_options, TransformersBackend(model, tok), data, batch_size=args.batch_size)
        seconds["workflow"].append(spent)
        theirs, harness_s, evaluate_s = _run_harness(lm, args, tasks, work)
        seconds["harness"].append(harness_s)
        seconds["evaluate"].append(evaluate_s)
        seconds["full"].append(_bare_forward_full(model, contexts, args.batch_size, tok.pad_token_id))
        seconds["cached"].append(_bare_forward_cached(model, contexts, list(data["subject"]), args.batch_size,
                                                      tok.pad_token_id))
    del lm
    best = {k: min(v) for k, v in seconds.items()}

    ours_lp = np.array(ours["option_logprobs"].tolist())
    theirs_lp = np.array([theirs[i] for i in ours["item_id"]])
    gold = ours["gold"].to_numpy()
    difference = np.abs(ours_lp - theirs_lp).max()
    print(f"  this workflow (score_options)             {best['workflow']:7.1f} s")
    print(f"  lm-evaluation-harness (loglikelihood)     {best['harness']:7.1f} s   "
          f"(simple_evaluate {best['evaluate']:.1f} s)")
    print(f"  speed-up over lm-evaluation-harness       {best['harness'] / best['workflow']:7.1f} x")
    print(f"  max |difference| of per-option log-probs  {difference:9.2e}")
    print(f"  accuracy: workflow {np.mean(ours_lp.argmax(1) == gold):.3f}, "
          f"lm-evaluation-harness {np.mean(theirs_lp.argmax(1) == gold):.3f} "
          f"(same choice on {np.sum(ours_lp.argmax(1) == theirs_lp.argmax(1))}/{len(gold)})")
    for key, what in (("full", "the full prompts"), ("cached", "prefixes + suffixes")):
        print(f"  bare forward over {what:<23} {best[key]:7.1f} s   workflow / it = "
              f"{best['workflow'] / best[key]:.2f}")
    _print_runs(seconds)
    return {"kind": "mc", "request": "loglikelihood", "items": f"{len(data)} q", "workflow": best["workflow"],
            "harness": best["harness"], "difference": f"{difference:.1e} (per-option log-prob)"}


def _print_runs(seconds: dict) -> None:
    print("  (all runs: " + ", ".join(f"{k} {' '.join(f'{x:.1f}' for x in v)}" for k, v in seconds.items()) + ")",
          flush=True)


# ----------------------------------------------------------------------------- option texts
def _table_from_samples(samples: list[dict], subject: str, delimiter: str = " ") -> pd.DataFrame:
    """The workflow's multiple-choice table on exactly the harness's inputs: per logged sample its
    one context (the prompt) and its continuations (the options, as the harness passed them)."""
    rows = []
    for s in samples:
        contexts = {context for context, _ in s["arguments"]}
        if len(contexts) != 1:
            raise SystemExit(f"{subject}/{s['doc_id']}: {len(contexts)} contexts, expected one")
        options = [continuation for _, continuation in s["arguments"]]
        rows.append({"item_id": f"{subject}/{s['doc_id']}", "subject": subject,
                     "question": s["doc"].get("question", ""), "prompt": contexts.pop(),
                     "choices": [o[len(delimiter):] if o.startswith(delimiter) else o for o in options],
                     "options": options, "gold": int(s["target"]), "scoring": "continuation"})
    return pd.DataFrame(rows)


def _harness_option_logprobs(samples: list[dict], subject: str) -> dict[str, list[float]]:
    return {f"{subject}/{s['doc_id']}": [float(r[0]) for r in s["filtered_resps"]] for s in samples}


def _continuation_tasks(args, work: Path) -> dict[str, str]:
    """Task YAMLs (name -> subject) that include the harness's own mmlu_continuation template, on the fixture data."""
    return _mmlu_tasks(args, work, "continuation/_continuation_template_yaml", "_continuation",
                       "The following are questions (with answers) about")


def _truthfulqa_task(args, work: Path) -> str:
    """A task YAML that includes the harness's truthfulqa_mc1.yaml, on the fixture mc_task.json
    in the layout of the hub's truthful_qa "multiple_choice" config (one validation split)."""
    import lm_eval

    rows = json.loads((FIXTURES / "truthfulqa" / "mc_task.json").read_text())
    rows = rows[:args.truthfulqa_limit] if args.truthfulqa_limit else rows
    path = work / "truthfulqa_mc.jsonl"
    path.write_text("".join(json.dumps({"question": row["question"], **{
        key: {"choices": list(row[key]), "labels": list(row[key].values())} for key in ("mc1_targets", "mc2_targets")}})
        + "\n" for row in rows))
    name = "bench_truthfulqa_mc1"
    config = {"include": str(Path(lm_eval.__file__).parent / "tasks" / "truthfulqa" / "truthfulqa_mc1.yaml"),
              "task": name, "tag": [], "dataset_path": "json", "dataset_name": None,
              "dataset_kwargs": {"data_files": {"validation": str(path)}}}
    (work / f"{name}.yaml").write_text(json.dumps(config))
    return name


def _score_like_harness(model, tok, args, tasks: dict[str, str], shots: int | None, work: Path, repeats: int):
    """Interleaved runs of the harness (its loglikelihood timed) and of score_options on the
    table built from the harness's first run, then the harness once more with
    ``softmax_dtype="float64"``. Returns the harness's samples by task (default, float64), the
    table, the workflow's scores and the seconds."""
    lm = _harness_model(args, max_length=None)
    seconds = {"workflow": [], "harness": [], "evaluate": []}
    samples = table = None
    for _ in range(repeats):
        results, harness_s, evaluate_s = _simple_evaluate(lm, list(tasks), shots, work)
        seconds["harness"].append(harness_s)
        seconds["evaluate"].append(evaluate_s)
        if samples is None:
            samples = {name: results["samples"][name] for name in tasks}
            table = pd.concat([_table_from_samples(samples[name], subject) for name, subject in tasks.items()],
                              ignore_index=True)
        ours, spent = _timed(score_options, TransformersBackend(model, tok), table, batch_size=args.batch_size)
        seconds["workflow"].append(spent)
    del lm
    lm = _harness_model(args, max_length=None, softmax_dtype="float64")
    results, harness_s, _ = _simple_evaluate(lm, list(tasks), shots, work)
    seconds["harness float64 softmax"] = [harness_s]
    samples64 = {name: results["samples"][name] for name in tasks}
    for name, subject in tasks.items():  # the same requests either way
        if list(_table_from_samples(samples64[name], subject)["prompt"]) != list(
                table[table["subject"] == subject]["prompt"]):
            raise SystemExit(f"{name}: the float64 run got other contexts")
    return samples, samples64, table, ours, seconds


def _option_differences(model, tok, table: pd.DataFrame, ours: pd.DataFrame, theirs: dict,
                        diagnose: bool = True) -> np.ndarray:
    """Per option |workflow - harness| (flattened); the largest one located, and (``diagnose``)
    the first few over 1e-4 against a plain forward pass of context + option."""
    ours = ours.set_index("item_id").loc[table["item_id"]]
    located = []
    for item, mine, counts in zip(table["item_id"], ours["option_logprobs"], ours["option_token_counts"]):
        for k, (a, b) in enumerate(zip(mine, theirs[item])):
            located.append((abs(a - b), item, k, a, b, counts[k]))
    located.sort(reverse=True)
    worst = located[0]
    print(f"  largest |Δ| {worst[0]:.2e} at {worst[1]} option {worst[2]} ({worst[5]} tokens): "
          f"workflow {worst[3]:.6f}, harness {worst[4]:.6f}")
    bad = [x for x in located if x[0] > 1e-4]
    if bad and diagnose:
        print(f"  {len(bad)} option(s) over 1e-4; the first few against a plain forward pass of context + option "
              f"(its float32 logits: log_softmax in float32 as the harness, logits - logsumexp in float32 as the "
              f"workflow, and exact in float64):")
        rows = table.set_index("item_id")
        for _delta, item, k, a, b, count in bad[:5]:
            context, options = encode_options(TransformersCodec(tok), rows.loc[item, "prompt"],
                                              list(rows.loc[item, "options"]))
            plain = _plain_option_logprobs(model, context, options[k])
            print(f"  DIFFERENT {item} option {k} ({count} tokens, context {len(context)}): workflow {a:.6f}, "
                  f"harness {b:.6f}; plain: log_softmax {plain['log_softmax'].sum():.6f}, logits - logsumexp "
                  f"{plain['logsumexp'].sum():.6f}, float64 {plain['float64'].sum():.6f}; per token "
                  f"log_softmax - float64 {np.mean(plain['log_softmax'] - plain['float64']):+.1e} (mean), "
                  f"logsumexp - float64 {np.mean(plain['logsumexp'] - plain['float64']):+.1e}")
    return np.array([x[0] for x in located])


def _plain_option_logprobs(model, context: list[int], option: list[int]) -> dict[str, np.ndarray]:
    """Per option token, its log-probability from one forward pass of context + option, three ways."""
    ids = torch.tensor([(context + option)[:-1]])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, len(context) - 1:].float()
    targets = torch.tensor(option)[:, None]
    ways = {"log_softmax": torch.log_softmax(logits, -1),
            "logsumexp": logits - torch.logsumexp(logits, -1, keepdim=True),
            "float64": torch.log_softmax(logits.double(), -1)}
    return {key: values.gather(1, targets)[:, 0].double().numpy() for key, values in ways.items()}


def _compare_continuation(model, tok, args, work: Path) -> dict:
    tasks = _continuation_tasks(args, work)
    print(f"\ncontinuation (option text): {len(args.subjects) * args.limit} MMLU questions ({len(args.subjects)} "
          f"subjects x {args.limit}), {args.continuation_shots}-shot, the harness's mmlu_continuation template",
          flush=True)
    samples, samples64, table, ours, seconds = _score_like_harness(model, tok, args, tasks, args.continuation_shots,
                                                                   work, args.repeats)
    best = {k: min(v) for k, v in seconds.items()}
    theirs, theirs64 = {}, {}
    for name, subject in tasks.items():
        theirs |= _harness_option_logprobs(samples[name], subject)
        theirs64 |= _harness_option_logprobs(samples64[name], subject)
    counts = np.concatenate(ours["option_token_counts"].map(np.array).to_numpy())
    print(f"  {len(table)} questions, {len(counts)} options of {counts.min()} to {counts.max()} tokens "
          f"(mean {counts.mean():.1f}); e.g. prompt ...{table['prompt'][0][-80:]!r}, "
          f"options {list(table['options'][0])}")
    difference, difference64 = _report_differences(model, tok, table, ours, theirs, theirs64)
    ours_lp = ours.set_index("item_id").loc[table["item_id"], "option_logprobs"].tolist()
    ours_pick = np.array([int(np.argmax(x)) for x in ours_lp])
    theirs_pick = np.array([int(np.argmax(theirs[item])) for item in table["item_id"]])
    gold = table["gold"].to_numpy()
    print(f"  this workflow (score_options)             {best['workflow']:7.1f} s")
    print(f"  lm-evaluation-harness (loglikelihood)     {best['harness']:7.1f} s   "
          f"(simple_evaluate {best['evaluate']:.1f} s)")
    print(f"  speed-up over lm-evaluation-harness       {best['harness'] / best['workflow']:7.1f} x")
    print(f"  accuracy: workflow {np.mean(ours_pick == gold):.3f}, lm-evaluation-harness "
          f"{np.mean(theirs_pick == gold):.3f} (same choice on {np.sum(ours_pick == theirs_pick)}/{len(gold)})")
    _print_runs(seconds)
    return {"kind": "continuation", "request": "loglikelihood", "items": f"{len(table)} q",
            "workflow": best["workflow"], "harness": best["harness"],
            "difference": f"{difference.max():.1e} per option log-prob; {difference64.max():.1e} with the "
                          f"harness's softmax_dtype float64"}


def _report_differences(model, tok, table, ours, theirs, theirs64):
    """max |Δ| per option against the harness as it runs by default and with softmax_dtype float64,
    and the harness's mean excess per option token (its float32 log-softmax)."""
    print("  against the harness (default, log-softmax in float32):")
    difference = _option_differences(model, tok, table, ours, theirs)
    print("  against the harness with softmax_dtype float64:")
    difference64 = _option_differences(model, tok, table, ours, theirs64, diagnose=False)
    ours = ours.set_index("item_id").loc[table["item_id"]]
    excess = np.concatenate([(np.array(theirs[item]) - np.array(lp)) / np.array(n) for item, lp, n in
                             zip(table["item_id"], ours["option_logprobs"], ours["option_token_counts"])])
    excess64 = np.concatenate([(np.array(theirs[item]) - np.array(theirs64[item])) / np.array(n) for item, n in
                               zip(table["item_id"], ours["option_token_counts"])])
    print(f"  harness - workflow per option token: mean {excess.mean():+.1e} (range {excess.min():+.1e} to "
          f"{excess.max():+.1e}); harness - its own float64-softmax run: mean {excess64.mean():+.1e}")
    print(f"  max |difference| of per-option log-probs  {difference.max():9.2e}; with the harness's softmax_dtype "
          f"float64 {difference64.max():9.2e}")
    return difference, difference64


def _compare_truthfulqa(model, tok, args, work: Path) -> dict:
    name = _truthfulqa_task(args, work)
    print(f"\nTruthfulQA MC1: the first {args.truthfulqa_limit or 'all'} questions of mc_task.json, "
          f"the harness's truthfulqa_mc1 (0-shot, its 6 QA pairs in the prompt); fastest of "
          f"{args.truthfulqa_repeats} run(s)", flush=True)
    samples, samples64, table, ours, seconds = _score_like_harness(model, tok, args, {name: "truthfulqa"}, None, work,
                                                                   args.truthfulqa_repeats)
    best = {k: min(v) for k, v in seconds.items()}
    samples = samples[name]
    theirs = _harness_option_logprobs(samples, "truthfulqa")
    theirs64 = _harness_option_logprobs(samples64[name], "truthfulqa")
    difference, difference64 = _report_differences(model, tok, table, ours, theirs, theirs64)
    ours_lp = ours.set_index("item_id").loc[table["item_id"], "option_logprobs"].tolist()
    ours_pick = np.array([int(np.argmax(x)) for x in ours_lp])  # continuation_sum: ties to the first index
    theirs_pick = np.array([int(np.argmax(theirs[item])) for item in table["item_id"]])
    gold = table["gold"].to_numpy()
    harness_acc = np.array([s["acc"] for s in samples])
    theirs64_pick = np.array([int(np.argmax(theirs64[item])) for item in table["item_id"]])
    differ = np.flatnonzero(ours_pick != theirs_pick)
    n_options = table["options"].map(len)
    counts = np.concatenate(ours["option_token_counts"].map(np.array).to_numpy())
    print(f"  {len(table)} questions, {n_options.sum()} options ({n_options.min()} to {n_options.max()} per question, "
          f"{counts.min()} to {counts.max()} tokens, mean {counts.mean():.1f})")
    print(f"  accuracy: lm-evaluation-harness acc {harness_acc.mean():.3f}, workflow continuation_sum "
          f"{np.mean(ours_pick == gold):.3f}; chosen index differs on {len(differ)} of {len(table)}"
          + (f" ({', '.join(table['item_id'][differ][:10])})" if len(differ) else "")
          + f"; against the harness's float64-softmax run on {np.sum(ours_pick != theirs64_pick)}")
    if not np.array_equal(harness_acc == 1, theirs_pick == gold):
        print("  NOTE: the harness's acc disagrees with the argmax of its own filtered_resps")
    print(f"  this workflow (score_options)             {best['workflow']:7.1f} s")
    print(f"  lm-evaluation-harness (loglikelihood)     {best['harness']:7.1f} s   "
          f"(simple_evaluate {best['evaluate']:.1f} s)")
    print(f"  speed-up over lm-evaluation-harness       {best['harness'] / best['workflow']:7.1f} x")
    _print_runs(seconds)
    _compare_truthfulqa_table(args, work, table)
    return {"kind": "truthfulqa", "request": "loglikelihood", "items": f"{len(table)} q",
            "workflow": best["workflow"], "harness": best["harness"],
            "difference": f"{difference.max():.1e} per option log-prob ({difference64.max():.1e} with softmax "
                          f"float64); chosen index differs {len(differ)}/{len(table)}"}


def _compare_truthfulqa_table(args, work: Path, harness: pd.DataFrame) -> None:
    """The workflow's own TruthfulQA table (prepare_task, format truthfulqa_mc) against the
    harness's contexts and continuations, where that loader exists."""
    path = work / "truthfulqa_workflow.parquet"
    try:
        prepare_task("truthfulqa", "multiple_choice",
                     {"format": "truthfulqa_mc", "path": str(FIXTURES / "truthfulqa" / "mc_task.json")}, path, shots=0)
    except Exception as exc:  # noqa: BLE001 - the loader may not exist yet
        print(f"  workflow's own table: prepare_task(format truthfulqa_mc) not available ({type(exc).__name__}: {exc})")
        return
    ours = read_table(path)
    print(f"  workflow's own table: {len(ours)} rows, columns {list(ours.columns)}")
    ours = ours.iloc[:len(harness)].reset_index(drop=True)
    same_prompt = sum(a == b for a, b in zip(ours["prompt"], harness["prompt"]))
    same_options = sum(list(a) == list(b) for a, b in zip(ours["options"], harness["options"]))
    same_gold = sum(int(a) == int(b) for a, b in zip(ours["gold"], harness["gold"]))
    print(f"  workflow's own table (prepare_task format truthfulqa_mc), first {len(harness)} rows: identical prompts "
          f"{same_prompt}/{len(harness)}, identical option lists {same_options}/{len(harness)}, same gold "
          f"{same_gold}/{len(harness)}")
    for a, b, item in zip(ours.itertuples(), harness.itertuples(), harness["item_id"]):
        if a.prompt != b.prompt or list(a.options) != list(b.options):
            print(f"  e.g. DIFFERENT {item}: workflow prompt ...{a.prompt[-60:]!r} options {list(a.options)[:3]}; "
                  f"harness ...{b.prompt[-60:]!r} options {list(b.options)[:3]}")
            break


# ----------------------------------------------------------------------------- language modelling
def _wikitext_articles(count: int) -> list[str]:
    """The first ``count`` WikiText-2 test articles, each its lines from one top-level heading
    (`` = Title = ``) to the next, as in the raw file."""
    articles = []
    for line in (FIXTURES / "wikitext-2-raw" / "wiki.test.raw").read_text().splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("= ") and not stripped.startswith("= ="):
            if len(articles) == count:
                break
            articles.append([])
        if articles:
            articles[-1].append(line)
    return ["".join(lines).strip() for lines in articles]


def _compare_clm(model, tok, args, work: Path) -> dict:
    """Per-document log-likelihood against the harness as it runs by default (log-softmax in the
    model's float32) and with its ``softmax_dtype="float64"`` (the exact log-softmax of the same
    logits, as this workflow computes it): the same windows, inputs and model either way."""
    from lm_eval.api.instance import Instance

    texts = _wikitext_articles(args.clm_docs)
    data = pd.DataFrame({"item_id": [f"wikitext/{n}" for n in range(len(texts))], "text": texts})
    harnesses = {"float32": _harness_model(args, max_length=args.window),
                 "float64": _harness_model(args, max_length=args.window, softmax_dtype="float64")}
    lm = harnesses["float32"]
    lengths = [len(lm.tok_encode(text)) for text in texts]
    print(f"\nCLM: {len(texts)} WikiText-2 articles, {sum(lengths)} tokens ({min(lengths)} to {max(lengths)} "
          f"per document), window {args.window} = harness max_length", flush=True)
    requests = [Instance("loglikelihood_rolling", {}, (text,), n) for n, text in enumerate(texts)]
    seconds = {"workflow": [], "harness": [], "harness float64 softmax": []}
    theirs = {}
    for _ in range(args.repeats):
        ours, spent = _timed(score_tokens, TransformersBackend(model, tok), data, window=args.window,
                             batch_size=args.batch_size, window_mode="rolling")
        seconds["workflow"].append(spent)
        for dtype, key in (("float32", "harness"), ("float64", "harness float64 softmax")):
            theirs[dtype], spent = _timed(harnesses[dtype].loglikelihood_rolling, requests, disable_tqdm=True)
            seconds[key].append(spent)
    best = {k: min(v) for k, v in seconds.items()}
    ours_ll = ours.groupby("item_id", sort=False)["target_logprob"].sum().reindex(data["item_id"]).to_numpy()
    counts = ours.groupby("item_id", sort=False).size().reindex(data["item_id"]).to_numpy()
    delta = {dtype: np.abs(ours_ll - np.array(ll, dtype=float)) for dtype, ll in theirs.items()}
    print(f"  this workflow (score_tokens, rolling)                    {best['workflow']:7.1f} s")
    print(f"  lm-evaluation-harness (loglikelihood_rolling)            {best['harness']:7.1f} s")
    print(f"  lm-evaluation-harness, softmax_dtype float64             {best['harness float64 softmax']:7.1f} s")
    print(f"  speed-up over lm-evaluation-harness                      {best['harness'] / best['workflow']:7.1f} x")
    for n, item in enumerate(data["item_id"]):
        print(f"  {item:<12} tokens {counts[n]:5d} (harness {lengths[n]:5d})  log-likelihood {ours_ll[n]:12.4f}, "
              f"harness {theirs['float32'][n]:12.4f} (|Δ| {delta['float32'][n]:.1e}; "
              f"{(theirs['float32'][n] - ours_ll[n]) / lengths[n]:+.1e} per token), float64 softmax "
              f"{theirs['float64'][n]:12.4f} (|Δ| {delta['float64'][n]:.1e})")
    for dtype in delta:
        print(f"  max |difference| of per-document log-likelihood, harness log-softmax in {dtype}: "
              f"{delta[dtype].max():.1e} nats")
    _print_runs(seconds)
    if delta["float64"].max() > 1e-3 or list(counts) != lengths:
        _diagnose_clm(model, lm, ours, data, int(delta["float64"].argmax()), args.window)
    del lm, harnesses
    return {"kind": "clm", "request": "loglikelihood_rolling", "items": f"{len(texts)} docs",
            "workflow": best["workflow"], "harness": best["harness"],
            "difference": f"{delta['float32'].max():.1e} nats per document; {delta['float64'].max():.1e} "
                          f"with the harness's softmax_dtype float64"}


def _diagnose_clm(model, lm, ours: pd.DataFrame, data: pd.DataFrame, index: int, window: int) -> None:
    """The harness's per-token log-probabilities of one document (its rolling windows, each in a
    forward pass of its own) against the workflow's: where they differ, and the windows."""
    from lm_eval import utils

    item, text = data["item_id"][index], data["text"][index]
    tokens = lm.tok_encode(text)
    mine = ours[ours["item_id"] == item].sort_values("position")
    reference, bounds = [], []
    with torch.inference_mode():
        for context, continuation in map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                token_list=tokens, prefix_token=lm.prefix_token_id, max_seq_len=window, context_len=1)):
            inputs = (context + continuation)[-(window + 1):][:-1]
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([inputs])).logits[0].double(), -1)
            logprobs = logprobs[-len(continuation):].gather(1, torch.tensor(continuation)[:, None])[:, 0]
            bounds.append((len(reference), len(inputs), len(continuation)))
            reference.extend(logprobs.tolist())
    print(f"  DIAGNOSIS {item}: harness prefix token {lm.prefix_token_id}, {len(tokens)} tokens; "
          f"workflow {len(mine)} rows, positions {mine['position'].min()}..{mine['position'].max()}, "
          f"first target ids {mine['target_id'].head(3).tolist()} vs harness {tokens[:3]}")
    print("  harness windows (first predicted token, inputs, predicted): " + ", ".join(map(str, bounds)))
    if len(mine) == len(tokens) and mine["target_id"].tolist() == tokens:
        diff = np.abs(mine["target_logprob"].to_numpy() - np.array(reference))
        bad = np.flatnonzero(diff > 1e-4)
        print(f"  per-token |Δ| max {diff.max():.1e}; {len(bad)} tokens over 1e-4, first at "
              f"{bad[:10].tolist()}; sum over the document {np.sum(mine['target_logprob']) - np.sum(reference):+.4f}")
        if "context_len" in mine:
            print(f"  workflow context_len at those tokens: {mine['context_len'].to_numpy()[bad[:10]].tolist()}")


# ----------------------------------------------------------------------------- generation
def _compare_generation(model, tok, args, work: Path) -> dict:
    from lm_eval.api.instance import Instance

    data_path = work / "geonames.parquet"
    prepare_task("geonames", "generation", {"format": "geonames", "relations": ["capital", "continent", "currency"]},
                 data_path, limit=args.facts)
    data = read_table(data_path)
    lm = _harness_model(args, max_length=args.window)
    print(f"\ngeneration: {len(data)} geonames prompts (capital, continent, currency x {args.facts}), greedy, "
          f"max_new_tokens {args.max_new_tokens}, stop {args.stop!r}", flush=True)
    options = {"until": list(args.stop), "max_gen_toks": args.max_new_tokens, "do_sample": False}
    requests = [Instance("generate_until", {}, (prompt, dict(options)), n) for n, prompt in enumerate(data["prompt"])]
    seconds = {"workflow": [], "harness": []}
    for _ in range(args.repeats):
        ours, spent = _timed(generate_answers, TransformersBackend(model, tok), data,
                             max_new_tokens=args.max_new_tokens, stop=list(args.stop), batch_size=args.batch_size)
        seconds["workflow"].append(spent)
        theirs, spent = _timed(lm.generate_until, requests, disable_tqdm=True)
        seconds["harness"].append(spent)
    del lm
    best = {k: min(v) for k, v in seconds.items()}
    ours = ours.set_index("item_id").loc[data["item_id"]]
    cut = [_cut_like_harness(text, args.stop) for text in ours["generated"]]
    same = [a == b for a, b in zip(cut, theirs)]
    print(f"  this workflow (generate_answers)        {best['workflow']:7.1f} s")
    print(f"  lm-evaluation-harness (generate_until)  {best['harness']:7.1f} s")
    print(f"  speed-up over lm-evaluation-harness     {best['harness'] / best['workflow']:7.1f} x")
    print(f"  identical texts: {sum(same)}/{len(same)}")
    for item, prompt, a, b, ok in zip(data["item_id"], data["prompt"], cut, theirs, same):
        if not ok:
            print(f"  DIFFERENT {item}: {prompt!r} -> workflow {a!r}, harness {b!r}")
    for _item, prompt, a in list(zip(data["item_id"], data["prompt"], cut))[::max(1, len(cut) // 6)]:
        print(f"  e.g. {prompt!r} -> {a!r}")
    _print_runs(seconds)
    return {"kind": "generation", "request": "generate_until", "items": f"{len(data)} facts",
            "workflow": best["workflow"], "harness": best["harness"],
            "difference": f"identical texts {sum(same)}/{len(same)}"}


def _cut_like_harness(text: str, until: list[str]) -> str:
    """The text before each stop string in turn (lm_eval.models.utils.postprocess_generated_text)."""
    for term in until:
        if term:
            text = text.split(term)[0]
    return text


# ----------------------------------------------------------------------------- the harness
def _harness_model(args, max_length: int | None, softmax_dtype: str | None = None):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=args.model, dtype="float32", device="cpu", batch_size=args.batch_size,
                max_length=max_length, softmax_dtype=softmax_dtype)


def _harness_tasks(args, work: Path) -> dict[str, str]:
    """Task YAMLs (name -> subject) that include the harness's own mmlu template, on the fixture data."""
    return _mmlu_tasks(args, work, "default/_default_template_yaml", "",
                       "The following are multiple choice questions (with answers) about")


def _mmlu_tasks(args, work: Path, template: str, suffix: str, description: str) -> dict[str, str]:
    """Task YAMLs (name -> subject) that include one of the harness's mmlu templates (a path under
    tasks/mmlu), on the fixture CSVs written as JSON lines."""
    import lm_eval

    template_path = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / template
    tasks = {}
    for subject in args.subjects:
        files = {}
        for split, rows in (("dev", None), ("test", args.limit)):
            questions = read_mmlu_csv(FIXTURES / "mmlu" / split / f"{subject}_{split}.csv", subject)[:rows]
            files[split] = str(work / f"{subject}_{split}.jsonl")
            Path(files[split]).write_text("".join(json.dumps({"question": q.question, "choices": q.choices,
                                                              "answer": q.gold}) + "\n" for q in questions))
        name = f"bench_mmlu_{subject}{suffix}"
        config = {"include": str(template_path), "task": name, "dataset_path": "json",
                  "dataset_kwargs": {"data_files": files},
                  "description": f"{description} {subject.replace('_', ' ')}.\n\n"}
        (work / f"{name}.yaml").write_text(json.dumps(config))  # JSON is YAML
        tasks[name] = subject
    return tasks


def _run_harness(lm, args, tasks: dict[str, str], work: Path):
    """Per-option log-probabilities by item id, the time in loglikelihood and in simple_evaluate."""
    results, loglikelihood_s, evaluate_s = _simple_evaluate(lm, list(tasks), args.shots, work)
    logprobs = {f"{subject}/{s['doc_id']}": [float(r[0]) for r in s["filtered_resps"]]
                for name, subject in tasks.items() for s in results["samples"][name]}
    return logprobs, loglikelihood_s, evaluate_s


def _simple_evaluate(lm, tasks: list[str], shots: int | None, work: Path):
    """The harness's results (with its samples) for task YAMLs under ``work``, the seconds spent
    in ``lm.loglikelihood`` and in ``simple_evaluate``."""
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
    try:
        started = time.perf_counter()
        results = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=shots, log_samples=True,
                                          bootstrap_iters=0, task_manager=TaskManager(include_path=str(work)))
        evaluate_s = time.perf_counter() - started
    finally:
        lm.loglikelihood = loglikelihood
    return results, sum(spent), evaluate_s


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


def _report_memory(args, work: Path) -> None:
    small, large = _clm_memory(args, work)
    print(f"CLM inference ({args.clm_lines} WikiText-2 lines, window {args.window}, batch {args.batch_size}), "
          f"peak resident memory during inference:")
    for name, run in (("corpus", small), ("corpus x 4", large)):
        print(f"  {name:<11} {run['rows']:6d} tokens in {run['seconds']:5.1f} s: peak {run['peak'] / 2**20:5.0f} MiB "
              f"(model loaded and run once: {run['loaded'] / 2**20:.0f} MiB; peaks of {args.repeats} runs: "
              f"{', '.join(f'{peak / 2**20:.0f}' for peak in run['peaks'])})")
    print(f"  peak growth for a 4x corpus: {100 * (large['peak'] / small['peak'] - 1):+.1f}%")


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
