"""Peak memory and time of the per-run stages (extract_confidence, recalibrate, score) and of compare on
synthetic CLM studies shaped like the paper's Pile task, against the number of runs and the tokens per run.

    .venv/bin/python benchmarks/scale.py                      # the full grid: about 10 min on 2 cores
    .venv/bin/python benchmarks/scale.py --quick              # a small grid: about 1 min
    .venv/bin/python benchmarks/scale.py --baseline HEAD~1 --stages compare   # also the code of a git revision

A seeded generator writes what each stage reads: the task table (documents of DOC_TOKENS tokens and their
text), a run's inference table (the columns of a CLM run: positions, target and argmax ids, log-probabilities,
entropy) and, for compare, every run's recalibrated table (max_prob under "none" and the four recalibrations,
with the columns recalibrate writes). The per-run stages run as a chain (inference -> confidence ->
recalibrated -> metrics) on one run of each size of --token-sizes; compare runs on studies of each of --runs
runs of --tokens tokens, and of --token-runs runs of each of --token-sizes, with the pairs of a study:
consecutive runs and the first run against every other one.

Every stage runs in a process of its own: its peak RSS is that process's high-water mark (VmHWM, the interpreter
and the imports included: the "floor" row is a process that only imports the stages), its time the stage
function's wall clock. A process that passes --cap-gb is stopped and reported as over it. With
--baseline REV every stage also runs with the package as it was at git revision REV (git archive), on the same
tables.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parents[1]
DOC_TOKENS = 2000  # tokens per document: the Pile task's documents hold up to 2,048
VOCABULARY = 50_000
RECALIBRATIONS = ("temperature", "platt", "isotonic", "histogram")
N_BINS, FOLDS, HISTOGRAM_BINS, SEED = 10, 5, 10, 0  # the defaults of config/schema.yaml
STAGES = ("extract_confidence", "recalibrate", "score", "compare")


# ---------------------------------------------------------------- the synthetic tables


def document_lengths(tokens: int) -> np.ndarray:
    """Documents of DOC_TOKENS tokens, the last one shorter, `tokens` in all."""
    lengths = np.full(-(-tokens // DOC_TOKENS), DOC_TOKENS)
    lengths[-1] = tokens - DOC_TOKENS * (len(lengths) - 1)
    return lengths


def item_ids(lengths: np.ndarray) -> pd.Series:
    """The item_id of every token (pandas' string dtype, as the stages read it)."""
    names = np.array([f"pile/{d:05d}" for d in range(len(lengths))], dtype=object)
    return pd.Series(pd.array(np.repeat(names, lengths), dtype="str"))


def task_table(lengths: np.ndarray, rng) -> pd.DataFrame:
    """The task table: item_id, the document's text (about 6 characters a token) and split."""
    words = np.array([f"w{i:04d}" for i in range(2000)], dtype=object)
    texts = [" ".join(words[rng.integers(0, len(words), n)]) for n in lengths]
    return pd.DataFrame({"item_id": pd.array([f"pile/{d:05d}" for d in range(len(lengths))], dtype="str"),
                         "text": pd.array(texts, dtype="str"), "split": "test"})


def token_draws(tokens: int, run: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """Every token's max-probability and whether the argmax is the target, for run `run` (a better model
    for a later run), and the run's generator for the rest."""
    rng = np.random.default_rng([SEED, run, tokens])
    confidence = rng.beta(2.0 + 0.05 * run, 2.0, tokens)
    correct = rng.uniform(size=tokens) < confidence ** 1.2
    return confidence, correct, rng


def inference_table(lengths: np.ndarray, run: int) -> pd.DataFrame:
    """A CLM inference table: the columns the CLM scoring writes, one row per token."""
    tokens = int(lengths.sum())
    confidence, correct, rng = token_draws(tokens, run)
    target = rng.integers(0, VOCABULARY, tokens)
    position = np.arange(tokens) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    max_logprob = np.log(confidence)
    return pd.DataFrame({
        "item_id": item_ids(lengths), "position": position, "target_id": target,
        "target_logprob": np.where(correct, max_logprob, max_logprob - rng.exponential(2.0, tokens)),
        "max_logprob": max_logprob,
        "argmax_id": np.where(correct, target, (target + rng.integers(1, VOCABULARY, tokens)) % VOCABULARY),
        "entropy": rng.gamma(2.0, 1.2, tokens), "context_len": position + 1})


def recalibrated_table(lengths: np.ndarray, run: int) -> pd.DataFrame:
    """A recalibrated table: max_prob under none and RECALIBRATIONS, the columns and row order recalibrate
    writes (temperature on temperature rows, the fold of every recalibrated row)."""
    tokens = int(lengths.sum())
    confidence, correct, _ = token_draws(tokens, run)
    items = item_ids(lengths)
    position = np.arange(tokens) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    fold = np.repeat(np.arange(len(lengths)) % FOLDS, lengths)
    logit = np.log(confidence) - np.log1p(-confidence)
    mapped = {"none": confidence, "temperature": 1.0 / (1.0 + np.exp(-logit / 1.3)),
              "platt": 1.0 / (1.0 + np.exp(-(0.8 * logit - 0.1))), "isotonic": np.round(confidence * 200) / 200,
              "histogram": (np.floor(confidence * HISTOGRAM_BINS) + 0.5) / HISTOGRAM_BINS}
    frames = [pd.DataFrame({"item_id": items, "method": "max_prob", "recalibration": name, "confidence": values,
                            "correct": correct, "position": position,
                            "temperature": 1.3 if name == "temperature" else np.nan,
                            "fold": pd.array(fold, dtype="Int64") if name != "none" else pd.NA})
              for name, values in mapped.items()]
    return pd.concat(frames, ignore_index=True).astype({"method": "str", "recalibration": "str", "fold": "Int64"})


def write_study(folder: Path, tokens: int, runs: int, inference: bool) -> list[Path]:
    """The task table, the inference table of run 0 (if `inference`) and the recalibrated tables of runs
    0..runs-1 at `tokens` tokens per run under `folder`, those not written before; their recalibrated paths."""
    from workflow_scripts.tables import write_table

    lengths = document_lengths(tokens)
    if not (folder / "data.parquet").exists():
        write_table(task_table(lengths, np.random.default_rng([SEED, tokens])), folder / "data.parquet")
    if inference and not (folder / "inference.parquet").exists():
        write_table(inference_table(lengths, 0), folder / "inference.parquet")
    paths = [folder / "recalibrated" / f"m{run:02d}.parquet" for run in range(runs)]
    for run, path in enumerate(paths):
        if not path.exists():
            write_table(recalibrated_table(lengths, run), path, {"stage": "recalibrate"})
    return paths


def compare_inputs(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    """The runs and pairs of a study: consecutive runs, and the first run against every other one."""
    runs = [{"task": "pile", "model": path.stem, "revision": "main", "path": str(path)} for path in paths]
    key = [{"model": run["model"], "revision": "main"} for run in runs]
    pairs = [{"comparison": "consecutive_sizes", "a": key[i - 1], "b": key[i]} for i in range(1, len(key))]
    pairs += [{"comparison": "aligned_vs_base", "a": key[0], "b": key[i]} for i in range(1, len(key))]
    return runs, pairs


# ---------------------------------------------------------------- one stage in a process of its own


def run_stage(stage: str, arguments: dict, code: Path) -> None:
    """The child: import the stages from `code`, run one, print its seconds."""
    sys.path.insert(0, str(code))
    from workflow_scripts.compare import compare
    from workflow_scripts.confidence import extract_confidence
    from workflow_scripts.recalibrate import recalibrate
    from workflow_scripts.scoring import score

    functions = {"extract_confidence": extract_confidence, "recalibrate": recalibrate, "score": score,
                 "compare": compare, "floor": lambda: None}
    start = time.perf_counter()
    functions[stage](*arguments.get("args", []), **arguments.get("kwargs", {}))
    seconds = time.perf_counter() - start
    # This process's own high-water mark: getrusage's ru_maxrss would also count the parent's, which Linux passes
    # on to a child through fork and exec.
    status = Path("/proc/self/status").read_text()
    print(json.dumps({"seconds": seconds, "peak_mb": int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)[1]) / 1024}))


def measure(stage: str, arguments: dict, code: Path, cap_mb: float) -> dict:
    """Seconds and peak RSS (MB) of `stage` run by `code` in a child process; "over" where it passed cap_mb."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, __file__, "--child", json.dumps([stage, arguments, str(code)])],
                                 stdout=out, stderr=err)
        over = threading.Event()

        def watch():
            try:
                process = psutil.Process(child.pid)
                while child.poll() is None:
                    if process.memory_info().rss > cap_mb * 2**20:
                        over.set()
                        process.kill()
                        return
                    time.sleep(0.05)
            except psutil.NoSuchProcess:
                return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        watcher.join()
        child.wait()
        if over.is_set():
            return {"peak_mb": cap_mb, "seconds": float("nan"), "status": f"over {cap_mb / 1024:.0f} GB"}
        out.seek(0), err.seek(0)
        if child.returncode:
            raise RuntimeError(f"{stage} failed (exit {child.returncode}):\n{err.read()[-3000:]}")
        return {**json.loads(out.read().splitlines()[-1]), "status": "ok"}


def label(code: str) -> str:
    """A code's name as part of a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in code)


def size_mb(*paths) -> float:
    return sum(Path(p).stat().st_size for p in paths) / 2**20


def per_run_stages(folder: Path, out: Path, n_bootstrap: int) -> list[tuple[str, dict, float]]:
    """The chain of the per-run stages on run 0 of `folder`, writing under `out`: (stage, arguments,
    input MB); an input's size is known once the stage before it has run, hence the callables."""
    data, inference = folder / "data.parquet", folder / "inference.parquet"
    confidence, recalibrated = out / "confidence.parquet", out / "recalibrated.parquet"
    metrics = [out / f"metrics{suffix}.parquet" for suffix in ("", ".bins", ".sweep", ".subjects", ".curves")]
    return [
        ("extract_confidence", {"args": ["clm", str(inference), str(data), str(confidence)],
                                "kwargs": {"methods": ["max_prob"]}}, lambda: size_mb(inference, data)),
        ("recalibrate", {"args": [str(confidence), str(data), str(recalibrated)],
                         "kwargs": {"methods": list(RECALIBRATIONS), "folds": FOLDS, "seed": SEED,
                                    "histogram_bins": HISTOGRAM_BINS}}, lambda: size_mb(confidence, data)),
        ("score", {"args": [str(recalibrated), *map(str, metrics)],
                   "kwargs": {"task": "pile", "model": "m00", "revision": "main", "step": None, "epoch": None,
                              "n_bins": N_BINS, "n_bootstrap": n_bootstrap, "seed": SEED}},
         lambda: size_mb(recalibrated)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small grid (runs 2 4 x 100k tokens; 50k to 200k)")
    parser.add_argument("--runs", type=int, nargs="+", default=[2, 5, 10, 20], help="runs of the compare studies")
    parser.add_argument("--tokens", type=int, default=1_000_000, help="tokens per run of the --runs studies")
    parser.add_argument("--token-sizes", type=int, nargs="+", default=[250_000, 1_000_000, 4_000_000])
    parser.add_argument("--token-runs", type=int, default=3, help="runs of the --token-sizes studies")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--baseline", metavar="REV", help="also run the stages with the package at git revision REV")
    parser.add_argument("--cap-gb", type=float, default=8.0, help="stop a stage whose RSS passes this")
    parser.add_argument("--workdir", type=Path, help="keep the synthetic tables here (default: a temporary folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_stage(*json.loads(args.child)[:2], Path(json.loads(args.child)[2]))
        return
    if args.quick:
        args.runs, args.tokens, args.token_sizes, args.token_runs = [2, 4], 100_000, [50_000, 100_000, 200_000], 2
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        work = args.workdir or Path(tmp)
        codes = {"new": ROOT}
        if args.baseline:
            codes[args.baseline] = Path(tmp) / "baseline"
            codes[args.baseline].mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "workflow_scripts"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(codes[args.baseline])], input=archive, check=True)
        print(f"cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, n_bootstrap {args.n_bootstrap}",
              flush=True)
        rows = []

        def record(stage, code, runs, tokens, input_mb, result):
            rows.append({"stage": stage, "code": code, "runs": runs, "tokens/run": tokens,
                         "input MB": round(input_mb, 1), "peak RSS MB": round(result["peak_mb"]),
                         "s": round(result["seconds"], 1), "status": result["status"]})
            print(" | ".join(str(v) for v in rows[-1].values()), flush=True)

        cap_mb = args.cap_gb * 1024
        for code, path in codes.items():
            record("floor", code, 0, 0, 0.0, measure("floor", {}, path, cap_mb))
        studies = [(args.tokens, runs) for runs in args.runs]
        studies += [(tokens, args.token_runs) for tokens in args.token_sizes
                    if (tokens, args.token_runs) not in studies]
        for tokens in sorted({tokens for tokens, _ in studies} | set(args.token_sizes)):
            folder = work / f"t{tokens}"
            runs = max([r for t, r in studies if t == tokens] or [0])
            started = time.perf_counter()
            paths = write_study(folder, tokens, runs, inference=tokens in args.token_sizes)
            print(f"# wrote {tokens} tokens x {runs} runs in {time.perf_counter() - started:.0f} s", flush=True)
            chain = [stage for stage in STAGES[:3] if stage in args.stages]
            if tokens in args.token_sizes and chain:
                for code, path in codes.items():
                    out = folder / f"out-{label(code)}"
                    out.mkdir(exist_ok=True)
                    for stage, arguments, input_mb in per_run_stages(folder, out, args.n_bootstrap):
                        if STAGES.index(stage) > STAGES.index(chain[-1]):
                            break
                        result = measure(stage, arguments, path, cap_mb)
                        if stage in chain:
                            record(stage, code, 1, tokens, input_mb(), result)
            if "compare" in args.stages:
                for n_runs in sorted(r for t, r in studies if t == tokens):
                    chosen = paths[:n_runs]
                    runs_, pairs = compare_inputs(chosen)
                    outputs = {code: folder / f"comparisons-{n_runs}-{label(code)}.csv" for code in codes}
                    for code, path in codes.items():
                        outputs[code].unlink(missing_ok=True)
                        arguments = {"args": [runs_, pairs, str(outputs[code])],
                                     "kwargs": {"n_bins": N_BINS, "n_bootstrap": args.n_bootstrap, "seed": SEED}}
                        record("compare", code, n_runs, tokens, size_mb(*chosen), measure("compare", arguments, path,
                                                                                           cap_mb))
                    if args.baseline and all(path.exists() for path in outputs.values()):
                        tables = [pd.read_csv(path) for path in outputs.values()]
                        same = tables[0].equals(tables[1])
                        print(f"# compare, {n_runs} runs x {tokens} tokens: the tables of both codes are "
                              f"{'equal in every value' if same else 'DIFFERENT'}", flush=True)
        table = pd.DataFrame(rows)
        print()
        print(table.to_markdown(index=False))


if __name__ == "__main__":
    main()
