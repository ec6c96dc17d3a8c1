"""Speed of the compare stage on a synthetic workload the size of the default run, and of its vectorised
bootstrap against the plain one (materialising every resample and scoring it with the plain metrics).

    .venv/bin/python benchmarks/compare_speed.py [--models 8] [--n-bootstrap 1000] [--plain-resamples 30]

Workload: one CLM task (40 documents, --clm-rows rows per method and recalibration) and three multiple-choice
tasks (150 items in 5 subjects, 4 options), each with --models runs of 5 methods x 5 recalibrations (none,
temperature, platt, isotonic, histogram; option_probs only on none and temperature), and per task every
pair i < j of models plus first-vs-others and consecutive pairs under two more labels.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import relplot

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workflow_scripts import compare as C  # noqa: E402
from workflow_scripts.bootstrap import resample_counts  # noqa: E402
from workflow_scripts.metrics import expected_calibration_error, static_calibration_error  # noqa: E402
from workflow_scripts.tables import write_table  # noqa: E402

METHODS = ("m1", "m2", "m3", "m4", "m5")
RECALIBRATIONS = ("none", "temperature", "platt", "isotonic", "histogram")


def mc_table(rng, n_items=150, n_options=4):
    frames = []
    for method in METHODS:
        for recalibration in RECALIBRATIONS:
            probs = rng.dirichlet(np.full(n_options, 0.8), size=n_items)
            gold = np.array([rng.choice(n_options, p=p) for p in probs])
            keep = recalibration in ("none", "temperature")
            frames.append(pd.DataFrame({
                "item_id": np.arange(n_items), "method": method, "recalibration": recalibration,
                "confidence": probs.max(axis=1), "correct": probs.argmax(axis=1) == gold,
                "subject": [f"s{i % 5}" for i in range(n_items)],
                "option_probs": list(probs) if keep else None, "gold": gold}))
    return pd.concat(frames, ignore_index=True)


def clm_table(rng, n_docs=40, rows=20_000):
    doc = np.sort(np.concatenate([np.arange(n_docs), rng.integers(0, n_docs, rows - n_docs)]))  # every document
    frames = []
    for method in METHODS:
        for recalibration in RECALIBRATIONS:
            conf = rng.beta(2, 2, rows)
            frames.append(pd.DataFrame({"item_id": doc, "method": method, "recalibration": recalibration,
                                        "confidence": conf, "correct": rng.uniform(size=rows) < conf ** 1.3}))
    return pd.concat(frames, ignore_index=True)


def workload(folder: Path, n_models: int, clm_rows: int):
    rng = np.random.default_rng(0)
    runs = []
    for task in ("pile", "mmlu", "arc", "truthfulqa"):
        for m in range(n_models):
            table = clm_table(rng, rows=clm_rows) if task == "pile" else mc_table(rng)
            path = folder / f"{task}-model{m}.parquet"
            write_table(table, path)
            runs.append({"task": task, "model": f"model{m}", "revision": "main", "path": str(path)})
    key = lambda m: {"model": f"model{m}", "revision": "main"}  # noqa: E731
    pairs = [{"comparison": "consecutive_sizes", "a": key(i), "b": key(j)}
             for i in range(n_models) for j in range(i + 1, n_models)]
    pairs += [{"comparison": "aligned_vs_base", "a": key(0), "b": key(j)} for j in range(1, n_models)]
    pairs += [{"comparison": "consecutive_checkpoints", "a": key(j - 1), "b": key(j)} for j in range(1, n_models)]
    return runs, pairs


def plain_resampled(rows: pd.DataFrame, side: C.Side, counts: np.ndarray) -> float:
    """Seconds per resample of materialising the rows and scoring them with the plain metrics."""
    unit = pd.Index(side.units).get_indexer(rows["item_id"])
    members = [np.flatnonzero(unit == u) for u in range(len(side.units))]
    start = time.perf_counter()
    for b in range(len(counts)):
        picks = np.concatenate([np.tile(members[u], int(c)) for u, c in enumerate(counts[b])])
        drawn = rows.iloc[picks]
        conf, hit = drawn["confidence"].to_numpy(), drawn["correct"].to_numpy().astype(float)
        hit.mean()
        expected_calibration_error(conf, hit, 10)
        relplot.metrics.smECE_sigma(conf, hit, side.rows.smooth[1])
        if side.rows.option_probs is not None:
            static_calibration_error(drawn["option_probs"], drawn["gold"], 10)
    return (time.perf_counter() - start) / len(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--clm-rows", type=int, default=20_000)
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--plain-resamples", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        runs, pairs = workload(folder, args.models, args.clm_rows)
        start, cpu = time.perf_counter(), time.process_time()
        C.compare(runs, pairs, folder / "comparisons.csv", n_bins=10, n_bootstrap=args.n_bootstrap, seed=0)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        result = pd.read_csv(folder / "comparisons.csv")
        print(f"compare: {len(runs)} runs, {len(result)} comparisons, n_bootstrap {args.n_bootstrap}: "
              f"{seconds:.1f} s wall, {cpu:.1f} s CPU (all threads)")
        for task, run in (("multiple choice", runs[-1]), ("CLM", runs[0])):
            rows = pd.read_parquet(run["path"])
            rows = rows[(rows["method"] == METHODS[0]) & (rows["recalibration"] == "none")].reset_index(drop=True)
            start = time.perf_counter()
            side = C.side_statistics(rows)
            setup = time.perf_counter() - start
            codes, _ = pd.factorize(side.unit_strata, use_na_sentinel=False)
            counts = resample_counts(codes, args.n_bootstrap, 0)
            start = time.perf_counter()
            side.resampled(counts)
            vectorised = (time.perf_counter() - start) / args.n_bootstrap
            plain = plain_resampled(rows, side, counts[:args.plain_resamples])
            print(f"{task} side ({len(rows)} rows, {len(side.units)} units): setup {setup * 1e3:.1f} ms, "
                  f"per resample vectorised {vectorised * 1e6:.1f} us, plain {plain * 1e6:.0f} us: "
                  f"{plain / vectorised:.0f}x")


if __name__ == "__main__":
    main()
