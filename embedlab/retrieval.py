"""Exact k-nearest-neighbour search and the retrieval metrics built on it.

Search is chunked over queries. A chunk of q queries against a gallery of n rows needs a float32 similarity
block and ``argpartition``'s int64 index block (and for euclidean one more float32 block): at most 16·q·n bytes.
Chunks are sized so that this stays under :data:`BLOCK_BYTES` (256 MiB), so peak extra memory is ~256 MiB plus the
k results per query, whatever the number of queries (the gallery itself must fit in memory). The top k come from
``argpartition`` then a sort; ties are broken by gallery position (lower first), so results never depend on the
partition's internal order.

For galleries too large for exact search, :class:`FaissIndex` answers the same queries from a ``faiss-cpu`` index
(``flat`` is exact; ``hnsw`` and ``ivf`` are approximate, tuned by ``evaluate.faiss.*``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from embedlab.params import FaissParams

Metric = str  # "cosine" | "euclidean"
BLOCK_BYTES = 256 * 2**20


def rows_per_chunk(gallery_size: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Queries per chunk so that the score and index blocks (≤ 16 bytes per pair) fit in ``block_bytes``."""
    return max(1, block_bytes // (16 * max(gallery_size, 1)))


def _scores(block: np.ndarray, gallery: np.ndarray, metric: Metric, gallery_sq: np.ndarray | None) -> np.ndarray:
    sims = block @ gallery.T
    if metric == "euclidean":
        assert gallery_sq is not None
        sq = (block**2).sum(1)[:, None] - 2 * sims + gallery_sq[None, :]
        return -np.sqrt(np.maximum(sq, 0, out=sq), out=sq)
    return sims


def _exclude_self(sims: np.ndarray, query_ids: np.ndarray | None, position: dict | None) -> None:
    if query_ids is None or position is None:
        return
    for row, qid in enumerate(query_ids):
        hit = position.get(qid)
        if hit is not None:
            sims[row, hit] = -np.inf


def _top_k_rows(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k per row, best first, ties by lower column index."""
    if k >= sims.shape[1]:
        order = np.argsort(-sims, axis=1, kind="stable")
        return order, np.take_along_axis(sims, order, axis=1)
    part = np.argpartition(sims, sims.shape[1] - k, axis=1)[:, -k:]
    part_scores = np.take_along_axis(sims, part, axis=1)
    ranked = np.lexsort((part, -part_scores), axis=1)
    part, part_scores = np.take_along_axis(part, ranked, axis=1), np.take_along_axis(part_scores, ranked, axis=1)
    # Where the k-th score is tied with columns left outside the partition, redo that row with a stable sort.
    kth = part_scores[:, -1:]
    ambiguous = np.flatnonzero((sims == kth).sum(1) > (part_scores == kth).sum(1))
    for row in ambiguous:
        order = np.argsort(-sims[row], kind="stable")[:k]
        part[row], part_scores[row] = order, sims[row, order]
    return part, part_scores


class FaissIndex:
    """A faiss index over the gallery, scored like exact search (cosine: inner product; euclidean: −distance).

    By default the index is built single-threaded, so HNSW graphs (whose shape depends on insertion order across
    threads) are the same on every run; ``build_threads=None`` uses every core (benchmarks). Searches use every core.
    """

    def __init__(self, gallery: np.ndarray, metric: Metric, params: FaissParams, build_threads: int | None = 1) -> None:
        import faiss

        gallery = np.ascontiguousarray(gallery, np.float32)
        self.metric, self.is_hnsw = metric, params.type == "hnsw"
        dim = gallery.shape[1]
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
        if params.type == "flat":
            index = faiss.IndexFlat(dim, faiss_metric)
        elif params.type == "hnsw":
            index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss_metric)
            index.hnsw.efConstruction = params.ef_construction
            index.hnsw.efSearch = params.ef_search
        else:
            nlist = max(1, min(params.nlist, len(gallery) // 39))  # faiss wants ≥ 39 training points per list
            index = faiss.IndexIVFFlat(faiss.IndexFlat(dim, faiss_metric), dim, nlist, faiss_metric)
            index.cp.seed = 1234
            index.nprobe = min(params.nprobe, nlist)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(build_threads or threads)
        try:
            if not index.is_trained:
                index.train(gallery)
            index.add(gallery)
        finally:
            faiss.omp_set_num_threads(threads)
        self.index = index

    def top_k(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.is_hnsw:  # HNSW returns at most efSearch results
            self.index.hnsw.efSearch = max(self.index.hnsw.efSearch, k)
        scores, indices = self.index.search(np.ascontiguousarray(queries, np.float32), k)
        if self.metric == "euclidean":
            scores = -np.sqrt(np.maximum(scores, 0))
        scores = np.where(indices < 0, -np.inf, scores).astype(np.float32)  # fewer than k found
        return indices.astype(np.int64), scores


def _drop_self(
    indices: np.ndarray, scores: np.ndarray, k: int, query_ids: np.ndarray, gallery_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Move each query's own id to the end of its results with score -inf (as exact search ranks it), keep k.

    Asked for k + 1 results, this drops the query itself (or the last result when the query was not among them);
    asked for the whole gallery (k = gallery size), the query is still there, last, at -inf, exactly as in exact
    search.
    """
    is_self = (gallery_ids[np.maximum(indices, 0)] == query_ids[:, None]) & (indices >= 0)
    order = np.argsort(is_self, axis=1, kind="stable")  # the others first, in rank order; the query last
    indices = np.take_along_axis(indices, order, axis=1)
    scores = np.where(np.take_along_axis(is_self, order, axis=1), -np.inf, np.take_along_axis(scores, order, 1))
    return indices[:, :k], scores[:, :k].astype(np.float32)


def iter_top_k(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    metric: Metric = "cosine",
    chunk_size: int | None = None,
    query_ids: np.ndarray | None = None,
    gallery_ids: np.ndarray | None = None,
    index: FaissIndex | None = None,
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Yield ``(query slice, indices, scores)`` chunk by chunk: the top ``k`` gallery rows per query, best first.

    Without ``index`` the search is exact over the whole gallery; with one, the faiss index answers (it must
    have been built on ``gallery``).
    """
    queries = np.asarray(queries, np.float32)
    gallery = np.asarray(gallery, np.float32)
    k = min(k, len(gallery))
    gallery_sq = (gallery**2).sum(1) if metric == "euclidean" else None
    chunk_size = chunk_size or rows_per_chunk(len(gallery))
    position = None if gallery_ids is None else {gid: i for i, gid in enumerate(gallery_ids)}
    for start in range(0, len(queries), chunk_size):
        rows = slice(start, start + chunk_size)
        chunk_ids = None if query_ids is None else query_ids[rows]
        if index is not None:
            exclude = chunk_ids is not None and gallery_ids is not None
            indices, scores = index.top_k(queries[rows], min(k + 1, len(gallery)) if exclude else k)
            if exclude:
                indices, scores = _drop_self(indices, scores, k, chunk_ids, gallery_ids)
            yield rows, indices, scores
            continue
        sims = _scores(queries[rows], gallery, metric, gallery_sq)
        _exclude_self(sims, chunk_ids, position)
        indices, scores = _top_k_rows(sims, k)
        yield rows, indices, scores


def search(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    metric: Metric = "cosine",
    chunk_size: int | None = None,
    query_ids: np.ndarray | None = None,
    gallery_ids: np.ndarray | None = None,
    index: FaissIndex | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(indices, scores)`` of the top ``k`` gallery rows per query, best first.

    ``cosine`` expects L2-normalised rows and scores by dot product (higher is better); ``euclidean`` scores by
    negative distance. A gallery row whose id equals the query's id is excluded (self-match by id, not by rank).
    """
    k = min(k, len(gallery))
    indices = np.empty((len(queries), k), np.int64)
    scores = np.empty((len(queries), k), np.float32)
    for rows, chunk_indices, chunk_scores in iter_top_k(
        queries, gallery, k, metric, chunk_size, query_ids, gallery_ids, index
    ):
        indices[rows], scores[rows] = chunk_indices, chunk_scores
    return indices, scores


@dataclass
class RetrievalReport:
    metrics: dict[str, float]
    map_at_k_curve: list[float]  # mAP@1 … mAP@k_max
    per_class_ap: dict[str, float]  # mAP@k per query class
    knn_predictions: np.ndarray
    neighbours: np.ndarray  # (queries, k_max) gallery indices
    scores: np.ndarray


def average_precision_at_k(relevant: np.ndarray, num_relevant: np.ndarray, k: int) -> np.ndarray:
    """Per-query AP@k normalised by min(k, R); queries whose class is absent from the gallery (R = 0) score 0."""
    rel = relevant[:, :k].astype(np.float64)
    precision = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
    denominator = np.minimum(k, num_relevant).astype(np.float64)
    return np.where(denominator > 0, (precision * rel).sum(1) / np.maximum(denominator, 1), 0.0)


def majority_vote(neighbour_labels: np.ndarray, neighbour_scores: np.ndarray) -> np.ndarray:
    """Most frequent label among the neighbours; ties go to the higher summed score, then to the nearer neighbour."""
    out = np.empty(len(neighbour_labels), np.int64)
    for row, (labels, scores) in enumerate(zip(neighbour_labels, neighbour_scores, strict=True)):
        candidates = list(dict.fromkeys(labels.tolist()))  # in rank order
        keys = [((labels == c).sum(), scores[labels == c].sum(), -labels.tolist().index(c)) for c in candidates]
        out[row] = candidates[max(range(len(candidates)), key=keys.__getitem__)]
    return out


def evaluate_retrieval(
    query_vectors: np.ndarray,
    query_labels: np.ndarray,
    gallery_vectors: np.ndarray,
    gallery_labels: np.ndarray,
    class_names: list[str],
    k: int = 5,
    k_max: int = 20,
    metric: Metric = "cosine",
    query_ids: np.ndarray | None = None,
    gallery_ids: np.ndarray | None = None,
    chunk_size: int | None = None,
    index: FaissIndex | None = None,
) -> RetrievalReport:
    """Every retrieval metric of the README for one model (queries against a gallery)."""
    k_max = max(k, k_max)
    same_id = (
        np.isin(query_ids, gallery_ids) if query_ids is not None and gallery_ids is not None else np.zeros(0, bool)
    )
    counts = np.bincount(gallery_labels, minlength=len(class_names))
    num_relevant = counts[query_labels].astype(np.int64)
    if same_id.size:  # the query itself is in the gallery and excluded: it is not a relevant result
        num_relevant = num_relevant - same_id.astype(np.int64)
    r_max = int(num_relevant.max()) if len(num_relevant) else 0
    depth = min(max(k_max, r_max), len(gallery_vectors))
    ranks = np.arange(1, depth + 1)
    neighbours = np.empty((len(query_labels), min(k_max, depth)), np.int64)
    scores = np.empty(neighbours.shape, np.float32)
    ap_curve = np.zeros((len(query_labels), k_max))
    map_at_r = np.zeros(len(query_labels))
    r_precision = np.zeros(len(query_labels))
    # Chunk by chunk, so MAP@R's R-deep ranking never exists for all queries at once.
    for rows, idx, sc in iter_top_k(
        query_vectors, gallery_vectors, depth, metric, chunk_size, query_ids, gallery_ids, index
    ):
        relevant = (gallery_labels[idx] == query_labels[rows, None]) & np.isfinite(sc)  # -inf: excluded self
        r = num_relevant[rows]
        for i in range(1, k_max + 1):
            ap_curve[rows, i - 1] = average_precision_at_k(relevant, r, i)
        rel_r = relevant & (ranks[None, : relevant.shape[1]] <= r[:, None])
        precision = np.cumsum(relevant, axis=1) / ranks[: relevant.shape[1]]
        safe_r = np.maximum(r, 1)
        map_at_r[rows] = np.where(r > 0, (precision * rel_r).sum(1) / safe_r, 0.0)
        r_precision[rows] = np.where(r > 0, rel_r.sum(1) / safe_r, 0.0)
        neighbours[rows], scores[rows] = idx[:, : neighbours.shape[1]], sc[:, : neighbours.shape[1]]
    relevant = (gallery_labels[neighbours] == query_labels[:, None]) & np.isfinite(scores)
    ap_k = ap_curve[:, k - 1]
    curve = [float(v) for v in ap_curve.mean(0)]
    knn = majority_vote(gallery_labels[neighbours[:, :k]], scores[:, :k])
    per_class = {
        name: float(ap_k[query_labels == c].mean()) for c, name in enumerate(class_names) if np.any(query_labels == c)
    }
    metrics = {
        f"map@{k}": float(ap_k.mean()),
        "precision@1": float(relevant[:, 0].mean()),
        f"precision@{k}": float(relevant[:, :k].mean()),
        f"hit_rate@{k}": float(relevant[:, :k].any(1).mean()),
        "map@r": float(map_at_r.mean()),
        "r_precision": float(r_precision.mean()),
        f"knn_accuracy@{k}": float((knn == query_labels).mean()),
    }
    return RetrievalReport(metrics, curve, per_class, knn, neighbours, scores)


def linear_probe_accuracy(
    train_vectors: np.ndarray, train_labels: np.ndarray, test_vectors: np.ndarray, test_labels: np.ndarray, seed: int
) -> float:
    """Logistic regression fitted on the gallery embeddings, scored on the queries."""
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(train_labels)) < 2:
        return float("nan")
    probe = LogisticRegression(max_iter=2000, random_state=seed)
    probe.fit(train_vectors, train_labels)
    return float(probe.score(test_vectors, test_labels))
