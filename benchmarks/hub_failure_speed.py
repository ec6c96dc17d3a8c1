"""Time from prepare_task to its error for a hub dataset that is not in the cache, offline
(HF_HUB_OFFLINE=1: the one clear error of tests/test_tasks.py::test_hub_failure_is_one_clear_error).

    .venv/bin/python benchmarks/hub_failure_speed.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workflow_scripts.tasks import DatasetError, prepare_task  # noqa: E402

DATASET = {"format": "mmlu_parquet", "dev": "all/dev-*.parquet", "test": "all/test-*.parquet",
           "hub": {"repo_id": "calibration-tests/no-such-dataset", "revision": "v9", "files": ["all/*"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            start = time.perf_counter()
            try:
                prepare_task("t", "multiple_choice", DATASET, Path(tmp) / "out.parquet")
            except DatasetError as error:
                seconds.append(time.perf_counter() - start)
                message = str(error)
            else:
                raise SystemExit("prepare_task did not fail: the dataset was found")
    print(message)
    print(f"hub failure, offline: {min(seconds) * 1e3:.1f} ms fastest, {max(seconds) * 1e3:.1f} ms slowest "
          f"of {args.repeats}")


if __name__ == "__main__":
    main()
