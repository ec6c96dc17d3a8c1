"""The stages at the paper's scale: memory bounded by one run's (method, recalibration) group, on the synthetic
CLM tables of the scale benchmark (benchmarks/scale.py), whose layout is checked against the stages' own."""
from __future__ import annotations

import importlib.util
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workflow_scripts import scoring
from workflow_scripts.compare import compare
from workflow_scripts.confidence import extract_confidence
from workflow_scripts.recalibrate import RECALIBRATION_METHODS, recalibrate
from workflow_scripts.tables import read_table, write_table

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("scale_benchmark", ROOT / "benchmarks" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCHMARK = load_benchmark()


ARROW_POOLS = []  # the pools of held_peak, kept: buffers they allocated may outlive the call


def held_peak(function, *args, **kwargs) -> int:
    """The most memory that Python and numpy (tracemalloc) and Arrow (a memory pool of its own) held at once,
    each at its own peak, while `function` ran: what the code holds, without the allocators' spare pages."""
    default = pa.default_memory_pool()
    arrow = pa.proxy_memory_pool(default)
    ARROW_POOLS.append(arrow)
    pa.set_memory_pool(arrow)
    tracemalloc.start()
    try:
        function(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1] + arrow.max_memory()
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(default)


def test_synthetic_tables_are_laid_out_as_the_stages_write_theirs(tmp_path):
    lengths = BENCHMARK.document_lengths(5_000)
    assert lengths.tolist() == [2000, 2000, 1000]
    write_table(BENCHMARK.task_table(lengths, np.random.default_rng(0)), tmp_path / "data.parquet")
    write_table(BENCHMARK.inference_table(lengths, 0), tmp_path / "inference.parquet")
    extract_confidence("clm", tmp_path / "inference.parquet", tmp_path / "data.parquet", tmp_path / "conf.parquet",
                       methods=["max_prob"])
    recalibrate(tmp_path / "conf.parquet", tmp_path / "data.parquet", tmp_path / "recal.parquet",
                methods=list(RECALIBRATION_METHODS), folds=5, seed=0, histogram_bins=10)
    made, synthetic = read_table(tmp_path / "recal.parquet"), BENCHMARK.recalibrated_table(lengths, 0)
    assert synthetic.dtypes.to_dict() == made.dtypes.to_dict()
    for column in ("item_id", "method", "recalibration", "position"):
        assert synthetic[column].tolist() == made[column].tolist(), column
    none = made["recalibration"] == "none"
    np.testing.assert_allclose(synthetic["confidence"][none], made["confidence"][none], rtol=1e-12)  # exp(log(c))
    assert synthetic["correct"].tolist() == made["correct"].tolist()


def write_in_row_groups(table: pd.DataFrame, path, rows: int) -> None:
    """`table` in row groups of `rows` rows, as a run of millions of tokens lies in row groups of 2**20."""
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), path, row_group_size=rows)


def test_compare_memory_does_not_grow_with_the_runs(tmp_path, monkeypatch):
    # Eight runs of the same 12,000 tokens (six documents) under five recalibrations, compared as a chain, scaled
    # down from millions of tokens (a row group and a batch of group keys per recalibration): holding every run's
    # table (as compare did), 8 runs took 2.7 times the memory of 2; read a group at a time, the same. The same
    # rows in every run give every side the same smECE bandwidth: the smoothing maps a first call caches serve all.
    monkeypatch.setattr(scoring, "BATCH_ROWS", 12_000)
    write_in_row_groups(BENCHMARK.recalibrated_table(BENCHMARK.document_lengths(12_000), 0), tmp_path / "run.parquet",
                        12_000)
    runs = [{"task": "pile", "model": f"m{m}", "revision": "main", "path": str(tmp_path / "run.parquet")}
            for m in range(8)]

    def chain(n):
        pairs = [{"comparison": "consecutive", "a": {"model": f"m{i}", "revision": "main"},
                  "b": {"model": f"m{i + 1}", "revision": "main"}} for i in range(n - 1)]
        return held_peak(compare, runs[:n], pairs, tmp_path / f"{n}.csv", n_bins=10, n_bootstrap=20, seed=0)

    chain(2)
    peaks = {n: chain(n) for n in (2, 8)}
    assert peaks[8] < 1.2 * peaks[2], peaks


def test_score_holds_one_group_at_a_time(tmp_path, monkeypatch):
    # The same 12,000 tokens under "none" alone and under five recalibrations, scaled down as above: reading the
    # whole table and a copy of every group (as score did), five groups took 3.3 times the memory of one; a
    # group at a time, the same.
    monkeypatch.setattr(scoring, "BATCH_ROWS", 12_000)
    table = BENCHMARK.recalibrated_table(BENCHMARK.document_lengths(12_000), 0)
    write_in_row_groups(table[table["recalibration"] == "none"], tmp_path / "one.parquet", 12_000)
    write_in_row_groups(table, tmp_path / "five.parquet", 12_000)

    def scored(name):
        outputs = [tmp_path / f"{name}.{table}.parquet" for table in ("summary", "bins", "sweep", "subjects", "curves")]
        return held_peak(scoring.score, tmp_path / f"{name}.parquet", *outputs, task="pile", model="m",
                         revision="main", step=None, epoch=None, n_bins=10, n_bootstrap=20, seed=0)

    scored("one")
    peaks = {name: scored(name) for name in ("one", "five")}
    assert peaks["five"] < 1.2 * peaks["one"], peaks
    assert len(read_table(tmp_path / "five.summary.parquet")) == 5


def test_score_gives_the_same_tables_a_group_at_a_time_as_from_the_whole_table(tmp_path, monkeypatch):
    table = BENCHMARK.recalibrated_table(BENCHMARK.document_lengths(3_000), 0)
    write_in_row_groups(table, tmp_path / "run.parquet", 1_000)
    written = {}
    for batch_rows in (2**20, 1_000):  # the table read whole, then a group at a time
        monkeypatch.setattr(scoring, "BATCH_ROWS", batch_rows)
        outputs = [tmp_path / f"{batch_rows}.{table}.parquet" for table in ("summary", "bins", "sweep", "subjects",
                                                                           "curves")]
        scoring.score(tmp_path / "run.parquet", *outputs, task="pile", model="m", revision="main", step=None,
                      epoch=None, n_bins=10, n_bootstrap=20, seed=0)
        written[batch_rows] = [read_table(path) for path in outputs]
    for whole, by_group in zip(*written.values()):
        pd.testing.assert_frame_equal(by_group, whole, check_exact=True)
    assert len(written[1_000][0]) == 5


def test_recalibrate_takes_each_fit_set_as_its_map_is_fitted(tmp_path):
    # 12,000 tokens in 40 documents under 10 folds and under 2: holding every fold's fit set at once (as
    # recalibrate did: K - 1 copies of the tokens) took 1.7 times the memory of 2 folds; taken as fitted, about
    # the same.
    lengths = np.full(40, 300)
    write_table(BENCHMARK.task_table(lengths, np.random.default_rng(0)), tmp_path / "data.parquet")
    write_table(BENCHMARK.inference_table(lengths, 0), tmp_path / "inference.parquet")
    extract_confidence("clm", tmp_path / "inference.parquet", tmp_path / "data.parquet", tmp_path / "conf.parquet",
                       methods=["max_prob"])

    def recalibrated(folds):
        return held_peak(recalibrate, tmp_path / "conf.parquet", tmp_path / "data.parquet",
                         tmp_path / f"{folds}.parquet", methods=list(RECALIBRATION_METHODS), folds=folds, seed=0,
                         histogram_bins=10)

    recalibrated(2)
    peaks = {folds: recalibrated(folds) for folds in (2, 10)}
    assert peaks[10] < 1.2 * peaks[2], peaks
