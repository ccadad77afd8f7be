"""Retrieval metrics: one function per metric, each defined in its docstring, and :func:`evaluate_retrieval`,
which ranks the gallery for every query once and computes them all.

Per query, ``relevant`` is a boolean row over the ranked results (True where the result has the query's class)
and R (``num_relevant``) is the number of gallery images of the query's class, the query itself excluded. A
query whose class is absent from the gallery (R = 0) scores 0 on every metric that divides by R.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedlab.retrieval.index import Index, iter_top_k


def average_precision_at_k(relevant: np.ndarray, num_relevant: np.ndarray, k: int) -> np.ndarray:
    """AP@k per query: Σ_{i≤k} P@i·rel_i / min(k, R). Its mean over queries is mAP@k."""
    rel = relevant[:, :k].astype(np.float64)
    precision = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
    denominator = np.minimum(k, num_relevant).astype(np.float64)
    return np.where(denominator > 0, (precision * rel).sum(1) / np.maximum(denominator, 1), 0.0)


def precision_at_k(relevant: np.ndarray, k: int) -> np.ndarray:
    """P@k per query: relevant results among the top k, over k (a gallery smaller than k: the missing results count
    as misses, as in trec_eval)."""
    return relevant[:, :k].sum(1) / k


def hit_rate_at_k(relevant: np.ndarray, k: int) -> np.ndarray:
    """Hit rate@k per query: 1 when any of the top k results is relevant."""
    return relevant[:, :k].any(1).astype(np.float64)


def average_precision_at_r(relevant: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
    """AP@R per query (MAP@R, Musgrave et al. 2020): Σ_{i≤R} P@i·rel_i / R; ``relevant`` must be ≥ R deep."""
    ranks = np.arange(1, relevant.shape[1] + 1)
    within_r = relevant & (ranks[None, :] <= num_relevant[:, None])
    precision = np.cumsum(relevant, axis=1) / ranks
    return np.where(num_relevant > 0, (precision * within_r).sum(1) / np.maximum(num_relevant, 1), 0.0)


def r_precision(relevant: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
    """R-precision per query: the share of the top R results that are relevant."""
    ranks = np.arange(1, relevant.shape[1] + 1)
    within_r = relevant & (ranks[None, :] <= num_relevant[:, None])
    return np.where(num_relevant > 0, within_r.sum(1) / np.maximum(num_relevant, 1), 0.0)


def majority_vote(neighbour_labels: np.ndarray, neighbour_scores: np.ndarray) -> np.ndarray:
    """The kNN classifier's prediction per query: the most frequent label among the neighbours; ties go to the
    higher summed score, then to the nearer neighbour. kNN accuracy@k is its accuracy over the top k."""
    out = np.empty(len(neighbour_labels), np.int64)
    for row, (labels, scores) in enumerate(zip(neighbour_labels, neighbour_scores, strict=True)):
        candidates = list(dict.fromkeys(labels.tolist()))  # in rank order
        keys = [((labels == c).sum(), scores[labels == c].sum(), -labels.tolist().index(c)) for c in candidates]
        out[row] = candidates[max(range(len(candidates)), key=keys.__getitem__)]
    return out


@dataclass
class RetrievalReport:
    """Every metric of one model, and what the plots need: the mAP@k curve, per-class AP and the top results."""

    metrics: dict[str, float]
    map_at_k_curve: list[float]  # mAP@1 … mAP@k_max
    per_class_ap: dict[str, float]  # mAP@k per query class
    knn_predictions: np.ndarray
    neighbours: np.ndarray  # (queries, k_max) gallery indices
    scores: np.ndarray


def relevant_counts(
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    num_classes: int,
    *,
    query_ids: np.ndarray | None = None,
    gallery_ids: np.ndarray | None = None,
) -> np.ndarray:
    """R per query: gallery images of its class, less one where the query itself is in the gallery (excluded)."""
    counts = np.bincount(gallery_labels, minlength=num_classes)[query_labels].astype(np.int64)
    if query_ids is not None and gallery_ids is not None:
        counts = counts - np.isin(query_ids, gallery_ids).astype(np.int64)
    return counts


def evaluate_retrieval(
    query_vectors: np.ndarray,
    query_labels: np.ndarray,
    index: Index,
    gallery_labels: np.ndarray,
    class_names: list[str],
    *,
    k: int = 5,
    k_max: int = 20,
    query_ids: np.ndarray | None = None,
    gallery_ids: np.ndarray | None = None,
    chunk_size: int | None = None,
    r_deep: bool = True,
) -> RetrievalReport:
    """Every retrieval metric (docs/retrieval.md) for one model: the queries against the gallery that ``index`` holds
    (built with ``gallery_ids`` when ``query_ids`` are given, so that a query never finds itself).

    MAP@R and R-precision need each query's R nearest (R: its class's size in the gallery, 11,900 in the
    cost curve's 200,000-image point).
    Without ``r_deep`` (an approximate index, which answers that deep slower than exact search) the search goes
    ``k_max`` deep and they are left out."""
    k_max = max(k, k_max)
    num_relevant = relevant_counts(
        query_labels, gallery_labels, len(class_names), query_ids=query_ids, gallery_ids=gallery_ids
    )
    deepest = int(num_relevant.max()) if r_deep and len(num_relevant) else 0
    depth = min(max(k_max, deepest), index.size)
    neighbours = np.empty((len(query_labels), min(k_max, depth)), np.int64)
    scores = np.empty(neighbours.shape, np.float32)
    ap_curve = np.zeros((len(query_labels), k_max))
    map_at_r, r_prec = np.zeros(len(query_labels)), np.zeros(len(query_labels))
    for rows, idx, sc in iter_top_k(query_vectors, index, depth, query_ids=query_ids, chunk_size=chunk_size):
        relevant = (gallery_labels[idx] == query_labels[rows, None]) & np.isfinite(sc)  # -inf: excluded self
        r = num_relevant[rows]
        for i in range(1, k_max + 1):
            ap_curve[rows, i - 1] = average_precision_at_k(relevant, r, i)
        map_at_r[rows], r_prec[rows] = average_precision_at_r(relevant, r), r_precision(relevant, r)
        neighbours[rows], scores[rows] = idx[:, : neighbours.shape[1]], sc[:, : neighbours.shape[1]]
    relevant = (gallery_labels[neighbours] == query_labels[:, None]) & np.isfinite(scores)
    ap_k = ap_curve[:, k - 1]
    knn = majority_vote(gallery_labels[neighbours[:, :k]], scores[:, :k])
    per_class = {
        name: float(ap_k[query_labels == c].mean()) for c, name in enumerate(class_names) if np.any(query_labels == c)
    }
    metrics = {
        f"map@{k}": float(ap_k.mean()),
        "precision@1": float(precision_at_k(relevant, 1).mean()),
        f"precision@{k}": float(precision_at_k(relevant, k).mean()),
        f"hit_rate@{k}": float(hit_rate_at_k(relevant, k).mean()),
        "map@r": float(map_at_r.mean()),
        "r_precision": float(r_prec.mean()),
        f"knn_accuracy@{k}": float((knn == query_labels).mean()),
    }
    if not r_deep:
        del metrics["map@r"], metrics["r_precision"]
    return RetrievalReport(metrics, [float(v) for v in ap_curve.mean(0)], per_class, knn, neighbours, scores)
