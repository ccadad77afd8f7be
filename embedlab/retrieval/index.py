"""k-nearest-neighbour search: exact or faiss, behind one interface (:class:`Index`).

Exact search is chunked over queries. A chunk of q queries against a gallery of n rows needs a float32 similarity
block and ``argpartition``'s int64 index block (and for euclidean one more float32 block): at most 16·q·n bytes.
Chunks are sized so that this stays under :data:`BLOCK_BYTES` (256 MiB), so peak extra memory is ~256 MiB plus the
k results per query, whatever the number of queries (the gallery itself must fit in memory). The top k come from
``argpartition`` then a sort; ties are broken by gallery position (lower first), so results never depend on the
partition's internal order.

For galleries too large for exact search, :class:`FaissIndex` answers the same queries from a ``faiss-cpu`` index
(``flat`` is exact; ``hnsw`` and ``ivf`` are approximate, tuned by ``evaluate.faiss.*``). Either can be wrapped in
:class:`ExpandedQueryIndex` (``evaluate.query_expansion``), which searches twice.

Scores: ``cosine`` expects L2-normalised rows and scores by dot product; ``euclidean`` scores by negative
distance; higher is better for both. When query and gallery ids are both given, a gallery row with the query's own
id is excluded (self-match by id, not by rank): it is ranked last with score ``-inf``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, Protocol

import numpy as np

from embedlab.core.params import FaissParams

Metric = Literal["cosine", "euclidean"]
BLOCK_BYTES = 256 * 2**20
# faiss trains IVF lists with k-means from a random start; a fixed seed makes an IVF index, and so its results,
# the same on every run.
IVF_KMEANS_SEED = 1234
# faiss wants at least this many training points per IVF list and warns below it.
IVF_MIN_POINTS_PER_LIST = 39


class Index(Protocol):
    """What the search functions need from an index: its size and the top k of one chunk of queries."""

    size: int

    def top_k(self, queries: np.ndarray, k: int, query_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` gallery rows per query and their scores, best first; a query's own id is excluded."""
        ...


def rows_per_chunk(gallery_size: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Queries per chunk so that the score and index blocks (≤ 16 bytes per pair) fit in ``block_bytes``."""
    return max(1, block_bytes // (16 * max(gallery_size, 1)))


class ExactIndex:
    """Brute-force search: every query scored against every gallery row."""

    def __init__(self, gallery: np.ndarray, metric: Metric = "cosine", *, gallery_ids: np.ndarray | None = None):
        self.gallery = np.asarray(gallery, np.float32)
        self.metric, self.size = metric, len(self.gallery)
        self.gallery_sq = (self.gallery**2).sum(1) if metric == "euclidean" else None
        self.position = None if gallery_ids is None else {gid: i for i, gid in enumerate(gallery_ids)}

    def top_k(self, queries: np.ndarray, k: int, query_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` gallery rows per query and their scores, best first."""
        sims = self._scores(np.asarray(queries, np.float32))
        if query_ids is not None and self.position is not None:
            for row, query_id in enumerate(query_ids):
                hit = self.position.get(query_id)
                if hit is not None:
                    sims[row, hit] = -np.inf
        return _top_k_rows(sims, min(k, self.size))

    def _scores(self, block: np.ndarray) -> np.ndarray:
        sims = block @ self.gallery.T
        match self.metric:
            case "cosine":
                return sims
            case "euclidean":
                sq = (block**2).sum(1)[:, None] - 2 * sims + self.gallery_sq[None, :]
                return -np.sqrt(np.maximum(sq, 0, out=sq), out=sq)
            case other:
                raise ValueError(f"unknown metric {other!r}")


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

    def __init__(
        self,
        gallery: np.ndarray,
        metric: Metric,
        params: FaissParams,
        *,
        gallery_ids: np.ndarray | None = None,
        build_threads: int | None = 1,
    ) -> None:
        import faiss

        gallery = np.ascontiguousarray(gallery, np.float32)
        self.metric, self.size, self.gallery_ids = metric, len(gallery), gallery_ids
        self.index = _faiss_index(gallery.shape[1], len(gallery), metric, params)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(build_threads or threads)
        try:
            if not self.index.is_trained:
                self.index.train(gallery)
            self.index.add(gallery)
        finally:
            faiss.omp_set_num_threads(threads)

    def top_k(self, queries: np.ndarray, k: int, query_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` gallery rows per query and their scores, best first (fewer found: index -1, -inf)."""
        k = min(k, self.size)
        exclude = query_ids is not None and self.gallery_ids is not None
        wanted = min(k + 1, self.size) if exclude else k
        options = {}
        if hasattr(self.index, "hnsw"):  # HNSW returns at most efSearch results: deepen this search only
            import faiss

            options["params"] = faiss.SearchParametersHNSW(efSearch=max(self.index.hnsw.efSearch, wanted))
        scores, indices = self.index.search(np.ascontiguousarray(queries, np.float32), wanted, **options)
        if self.metric == "euclidean":
            scores = -np.sqrt(np.maximum(scores, 0))
        scores = np.where(indices < 0, -np.inf, scores).astype(np.float32)
        indices = indices.astype(np.int64)
        if exclude:
            return _drop_self(indices, scores, k, query_ids, self.gallery_ids)
        return indices, scores


class ExpandedQueryIndex:
    """Average query expansion (Chum et al. 2007; αQE with α = 0, Radenović et al. 2018): each query is searched,
    averaged with its top ``neighbours`` results, and the average is searched again.

    It reads the gallery's embeddings, never its labels, so it is a search method like any other; it lifts mAP@k
    where a query's nearest neighbours are mostly right but its very nearest is not (docs/retrieval.md)."""

    def __init__(self, base: Index, gallery: np.ndarray, metric: Metric, neighbours: int) -> None:
        self.base, self.metric, self.neighbours, self.size = base, metric, neighbours, base.size
        self.gallery = np.asarray(gallery, np.float32)

    def top_k(self, queries: np.ndarray, k: int, query_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` for the expanded queries; a query's own id stays excluded from both searches."""
        queries = np.asarray(queries, np.float32)
        indices, scores = self.base.top_k(queries, min(self.neighbours, self.size), query_ids)
        found = np.isfinite(scores)[..., None]  # -inf: the query itself or nothing found
        expanded = queries + np.where(found, self.gallery[np.maximum(indices, 0)], 0.0).sum(1)
        if self.metric == "cosine":
            expanded /= np.maximum(np.linalg.norm(expanded, axis=1, keepdims=True), 1e-12)
        else:
            expanded /= 1 + found.sum(1)
        return self.base.top_k(expanded, k, query_ids)


def _faiss_index(dim: int, size: int, metric: Metric, params: FaissParams):
    """The empty faiss index that ``evaluate.faiss.type`` names."""
    import faiss

    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    match params.type:
        case "flat":
            return faiss.IndexFlat(dim, faiss_metric)
        case "hnsw":
            index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss_metric)
            index.hnsw.efConstruction = params.ef_construction
            index.hnsw.efSearch = params.ef_search
            return index
        case "ivf":
            nlist = max(1, min(params.nlist, size // IVF_MIN_POINTS_PER_LIST))
            index = faiss.IndexIVFFlat(faiss.IndexFlat(dim, faiss_metric), dim, nlist, faiss_metric)
            index.cp.seed = IVF_KMEANS_SEED
            index.nprobe = min(params.nprobe, nlist)
            return index
        case other:
            raise ValueError(f"unknown evaluate.faiss.type {other!r}")


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


def build_index(
    gallery: np.ndarray,
    metric: Metric,
    *,
    kind: Literal["exact", "faiss"] = "exact",
    faiss: FaissParams | None = None,
    gallery_ids: np.ndarray | None = None,
    query_expansion: int = 0,
) -> Index:
    """The index ``evaluate.index`` (or ``embedlab serve --index``) names, over ``gallery``; with
    ``query_expansion`` (``evaluate.query_expansion``) neighbours averaged into every query."""
    match kind:
        case "exact":
            index: Index = ExactIndex(gallery, metric, gallery_ids=gallery_ids)
        case "faiss":
            index = FaissIndex(gallery, metric, faiss or FaissParams(), gallery_ids=gallery_ids)
        case other:
            raise ValueError(f"unknown index {other!r}")
    return ExpandedQueryIndex(index, gallery, metric, query_expansion) if query_expansion else index


def iter_top_k(
    queries: np.ndarray,
    index: Index,
    k: int,
    *,
    query_ids: np.ndarray | None = None,
    chunk_size: int | None = None,
) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Yield ``(query slice, indices, scores)`` chunk by chunk: the top ``k`` gallery rows per query, best first,
    so that a deep ranking (MAP@R's) never exists for every query at once."""
    queries = np.asarray(queries, np.float32)
    k = min(k, index.size)
    chunk_size = chunk_size or rows_per_chunk(index.size)
    for start in range(0, len(queries), chunk_size):
        rows = slice(start, start + chunk_size)
        indices, scores = index.top_k(queries[rows], k, None if query_ids is None else query_ids[rows])
        yield rows, indices, scores


def search(
    queries: np.ndarray,
    index: Index,
    k: int,
    *,
    query_ids: np.ndarray | None = None,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, scores)`` of the top ``k`` gallery rows per query, best first."""
    k = min(k, index.size)
    indices = np.empty((len(queries), k), np.int64)
    scores = np.empty((len(queries), k), np.float32)
    for rows, chunk_indices, chunk_scores in iter_top_k(queries, index, k, query_ids=query_ids, chunk_size=chunk_size):
        indices[rows], scores[rows] = chunk_indices, chunk_scores
    return indices, scores
