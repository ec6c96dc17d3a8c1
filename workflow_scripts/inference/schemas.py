"""The raw tables of the inference stage: their Parquet schemas, their row order, and how they are written."""
from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..kinds import CLM, GENERATION, MULTIPLE_CHOICE
from ..tables import PROVENANCE_KEY, atomic_path, provenance_info

TOKEN_SCHEMA = pa.schema([("item_id", pa.string()), ("position", pa.int64()), ("target_id", pa.int64()),
                          ("target_logprob", pa.float64()), ("max_logprob", pa.float64()),
                          ("argmax_id", pa.int64()), ("entropy", pa.float64()), ("context_len", pa.int64())])
OPTION_SCHEMA = pa.schema([("item_id", pa.string()), ("subject", pa.string()),
                           ("option_logprobs", pa.list_(pa.float64())),
                           ("option_token_counts", pa.list_(pa.int64())),
                           ("option_min_logprobs", pa.list_(pa.float64())), ("letter_mass", pa.float64()),
                           ("gold", pa.int64()), ("truncated", pa.bool_())])
ANSWER_SCHEMA = pa.schema([("item_id", pa.string()), ("token_ids", pa.list_(pa.int64())),
                           ("token_logprobs", pa.list_(pa.float64())), ("generated", pa.string()),
                           ("answer_text", pa.string()), ("gold_first_ids", pa.list_(pa.int64())),
                           ("first_text", pa.int64()), ("truncated", pa.bool_())])
SCHEMAS = {CLM: TOKEN_SCHEMA, GENERATION: ANSWER_SCHEMA, MULTIPLE_CHOICE: OPTION_SCHEMA}


def in_table_order(kind: str, frames: list[pd.DataFrame], data: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frames`` (of a generation or multiple-choice task) in the order of its table: questions as
    in the task table ``data``, facts by id."""
    if not frames:
        return SCHEMAS[kind].empty_table().to_pandas()
    result = pd.concat(frames, ignore_index=True)
    if kind == GENERATION:
        return result.sort_values("item_id", kind="stable", ignore_index=True)
    position = pd.Series(range(len(data)), index=data["item_id"])
    return result.iloc[position.loc[result["item_id"]].to_numpy().argsort(kind="stable")].reset_index(drop=True)


def write_row_groups(frames, path, schema: pa.Schema, provenance: dict | None = None) -> int:
    """Write each DataFrame of ``frames`` as one row group of a Parquet file, atomically and with
    the provenance metadata of ``tables.write_table``; return the number of rows written."""
    info = json.dumps(provenance_info(provenance), sort_keys=True, default=str)
    schema = schema.with_metadata({PROVENANCE_KEY: info.encode()})
    rows = 0
    with atomic_path(path, suffix=".parquet") as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for frame in frames:
            writer.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))
            rows += len(frame)
    return rows
