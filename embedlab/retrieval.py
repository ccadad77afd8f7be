"""Exact k-nearest-neighbour retrieval and the ranking metrics built on it.

Search is chunked over queries: each chunk's similarity block is ``chunk × gallery`` float32, so peak extra memory
is ``chunk_size × len(gallery) × 4`` bytes whatever the number of queries; the top k come from ``argpartition``
and are then sorted (ties broken by gallery position, so results are deterministic).
"""

from __future__ import annotations

import numpy as np


def search(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    metric: str = "cosine",
    chunk_size: int = 1024,
    query_ids: np.ndarray | None = None,
    gallery_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(indices, scores)`` of the top ``k`` gallery rows per query, best first.

    ``cosine`` expects L2-normalised rows and scores by dot product (higher is better); ``euclidean`` scores by
    negative distance. A gallery row with the same id as its query is excluded (self-match by id, not by rank).
    """
    k = min(k, len(gallery))
    queries = np.asarray(queries, np.float32)
    gallery = np.asarray(gallery, np.float32)
    gallery_sq = (gallery**2).sum(1) if metric == "euclidean" else None
    indices = np.empty((len(queries), k), np.int64)
    scores = np.empty((len(queries), k), np.float32)
    order_key = np.arange(len(gallery))
    for start in range(0, len(queries), chunk_size):
        block = queries[start : start + chunk_size]
        sims = block @ gallery.T
        if metric == "euclidean":
            sims = -np.sqrt(np.maximum((block**2).sum(1)[:, None] - 2 * sims + gallery_sq[None, :], 0))
        if query_ids is not None and gallery_ids is not None:
            sims[query_ids[start : start + chunk_size, None] == gallery_ids[None, :]] = -np.inf
        take = min(k, sims.shape[1])
        part = (
            np.argpartition(-sims, take - 1, axis=1)[:, :take]
            if take < sims.shape[1]
            else np.tile(order_key, (len(block), 1))
        )
        part_scores = np.take_along_axis(sims, part, axis=1)
        # Sort by score descending, then by gallery position ascending (deterministic ties).
        ranked = np.lexsort((part, -part_scores), axis=1)
        indices[start : start + len(block)] = np.take_along_axis(part, ranked, axis=1)
        scores[start : start + len(block)] = np.take_along_axis(part_scores, ranked, axis=1)
    return indices, scores


def map_at_k(relevant: np.ndarray, num_relevant: np.ndarray, k: int) -> float:
    """mAP@k normalised by min(k, R): ``relevant`` is the (queries, ≥k) 0/1 matrix of ranked results."""
    rel = relevant[:, :k].astype(np.float64)
    precision_at_i = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
    denominator = np.minimum(k, num_relevant).astype(np.float64)
    ap = np.where(denominator > 0, (precision_at_i * rel).sum(1) / np.maximum(denominator, 1), 0.0)
    return float(ap.mean())
