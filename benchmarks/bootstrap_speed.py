"""Speed of the ECE bootstrap interval on a CLM-sized table of independent rows (every cell of a million
rows is drawn by its normal limit), and of the row-by-row draw it replaces on a few resamples.

    .venv/bin/python benchmarks/bootstrap_speed.py [--rows 1000000] [--n-bootstrap 1000] [--exact-resamples 20]

Rows: confidences uniform in [0.5, 1], each right with probability confidence - 0.1 (ECE about 0.1), as
tests/test_metrics.py draws them.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workflow_scripts import bootstrap  # noqa: E402


def timed(conf, correct, n_bootstrap: int) -> float:
    """Seconds of one bootstrap_ece_interval call."""
    start = time.perf_counter()
    bootstrap.bootstrap_ece_interval(conf, correct, n_bootstrap=n_bootstrap)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10**6)
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    parser.add_argument("--exact-resamples", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, args.rows)
    correct = rng.uniform(size=args.rows) < conf - 0.1
    seconds = timed(conf, correct, args.n_bootstrap)
    print(f"bootstrap_ece_interval: {args.rows} rows, n_bootstrap {args.n_bootstrap}: {seconds:.2f} s wall "
          f"({seconds / args.n_bootstrap * 1e3:.2f} ms per resample)")
    bootstrap.EXACT_CELL_SIZE = args.rows  # every confidence drawn row by row
    exact = timed(conf, correct, args.exact_resamples) / args.exact_resamples
    print(f"row by row: {exact * 1e3:.0f} ms per resample, {exact * args.n_bootstrap:.0f} s for "
          f"n_bootstrap {args.n_bootstrap}")


if __name__ == "__main__":
    main()
