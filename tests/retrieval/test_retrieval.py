"""Retrieval search and metrics on hand-computed cases and against brute-force NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from embedlab.core.params import FaissParams
from embedlab.embed.embeddings import l2_normalize
from embedlab.retrieval.index import ExactIndex, ExpandedQueryIndex, FaissIndex, build_index, search
from embedlab.retrieval.metrics import average_precision_at_k, evaluate_retrieval, majority_vote


def _unit(angles_deg: list[float]) -> np.ndarray:
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def test_ap_at_k_hand_computed() -> None:
    rel = np.array([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    r = np.array([2, 1, 0, 9])
    # q0: (1/1 + 2/3) / min(5, 2); q1 (k > R): (1/2) / 1; q2: class absent from gallery -> 0; q3: 5/5.
    np.testing.assert_allclose(average_precision_at_k(rel, r, 5), [(1 + 2 / 3) / 2, 0.5, 0.0, 1.0])
    np.testing.assert_allclose(average_precision_at_k(rel, r, 1), [1.0, 0.0, 0.0, 1.0])


def test_full_report_hand_computed() -> None:
    # Gallery on the unit circle; the query at 0° ranks the gallery by angle.
    gallery = _unit([10, 20, 30, 40, 200])
    gallery_labels = np.array([0, 1, 0, 1, 1])
    query = _unit([0])
    report = evaluate_retrieval(query, np.array([0]), ExactIndex(gallery), gallery_labels, ["a", "b"], k=3, k_max=4)
    # Ranking: 10°(a) 20°(b) 30°(a) 40°(b) 200°(b); R = 2 relevant (label a).
    assert list(report.neighbours[0]) == [0, 1, 2, 3]
    m = report.metrics
    assert m["map@3"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["precision@1"] == 1.0 and m["precision@3"] == pytest.approx(2 / 3) and m["hit_rate@3"] == 1.0
    assert m["r_precision"] == pytest.approx(0.5)  # one of the top R=2 is relevant
    assert m["map@r"] == pytest.approx(0.5)  # (1/R) * P(1)*1 = 1/2
    assert m["knn_accuracy@3"] == 1.0  # votes a, b, a
    assert report.map_at_k_curve[0] == 1.0 and len(report.map_at_k_curve) == 4


def test_map_curve_and_per_class_ap_hand_computed() -> None:
    gallery = _unit([10, 20, 30, 40, 200])
    gallery_labels = np.array([0, 1, 0, 1, 1])
    queries = _unit([0, 24])
    report = evaluate_retrieval(
        queries, np.array([0, 1]), ExactIndex(gallery), gallery_labels, ["a", "b"], k=3, k_max=4
    )
    # q0 (a, R=2) ranks a b a b b: AP@1..4 = 1, 1/2, (1 + 2/3)/2, (1 + 2/3)/2
    # q1 (b, R=3) ranks 20°b 30°a 10°a 40°b: AP@1..4 = 1, 1/2, 1/3, (1 + 2/4)/3
    q0, q1 = [1, 1 / 2, 5 / 6, 5 / 6], [1, 1 / 2, 1 / 3, 1 / 2]
    np.testing.assert_allclose(report.map_at_k_curve, (np.array(q0) + q1) / 2)
    assert report.per_class_ap == pytest.approx({"a": 5 / 6, "b": 1 / 3})  # AP@3 of each class's queries
    assert report.metrics["map@3"] == pytest.approx((5 / 6 + 1 / 3) / 2)


def test_k_larger_than_the_gallery() -> None:
    """Three gallery images, k = 5: P@5 counts the missing results as misses; AP@5 divides by min(5, R)."""
    gallery, labels = _unit([10, 20, 200]), np.array([0, 0, 1])
    report = evaluate_retrieval(_unit([0]), np.array([0]), ExactIndex(gallery), labels, ["a", "b"], k=5, k_max=5)
    assert list(report.neighbours[0]) == [0, 1, 2]
    m = report.metrics
    assert m["precision@5"] == pytest.approx(2 / 5) and m["precision@1"] == 1.0 and m["hit_rate@5"] == 1.0
    assert m["map@5"] == 1.0 and m["knn_accuracy@5"] == 1.0 and report.map_at_k_curve == [1.0] * 5


def test_ties_break_by_gallery_order_and_duplicates() -> None:
    gallery = _unit([5, 5, 5, 5, 90])  # four identical vectors
    labels = np.array([1, 0, 0, 1, 0])
    idx, scores = search(_unit([0]), ExactIndex(gallery), k=2)
    assert list(idx[0]) == [0, 1] and scores[0, 0] == scores[0, 1]
    idx, _ = search(_unit([0]), ExactIndex(gallery), k=3, chunk_size=1)
    assert list(idx[0]) == [0, 1, 2]
    report = evaluate_retrieval(_unit([0]), np.array([0]), ExactIndex(gallery), labels, ["x", "y"], k=2, k_max=2)
    assert report.metrics["precision@1"] == 0.0 and report.metrics["map@2"] == pytest.approx(0.5 / 2)


def test_self_excluded_by_id_not_by_rank() -> None:
    gallery = _unit([0, 0, 50, 90])  # the query's own copy and an exact duplicate with another id
    labels = np.array([0, 0, 1, 0])
    ids = np.array(["q", "dup", "g2", "g3"])
    report = evaluate_retrieval(
        _unit([0]),
        np.array([0]),
        ExactIndex(gallery, gallery_ids=ids),
        labels,
        ["a", "b"],
        k=3,
        k_max=3,
        query_ids=np.array(["q"]),
        gallery_ids=ids,
    )
    assert list(report.neighbours[0]) == [1, 2, 3]  # "q" itself gone, its duplicate kept
    # R = 2 (dup, g3; the query itself does not count): (1/1 + 2/3) / 2
    assert report.metrics["map@3"] == pytest.approx((1 + 2 / 3) / 2)


def test_class_absent_from_gallery_scores_zero() -> None:
    report = evaluate_retrieval(
        _unit([0]), np.array([2]), ExactIndex(_unit([1, 2])), np.array([0, 1]), ["a", "b", "c"], k=2, k_max=2
    )
    assert report.metrics["map@2"] == 0.0 and report.metrics["map@r"] == 0.0 and report.metrics["hit_rate@2"] == 0.0


def test_majority_vote_ties() -> None:
    labels = np.array([[1, 2, 2, 1], [3, 4, 5, 6]])
    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.9, 0.8, 0.7, 0.6]])
    # row 0: 1 and 2 tie on votes; summed score 1.0 vs 1.5 -> 2. row 1: all single, highest score -> 3.
    assert list(majority_vote(labels, scores)) == [2, 3]
    # votes and summed scores tie: the nearer neighbour's label, whichever label that is
    tied = np.array([[0.5, 0.5, 0.2, 0.2]])
    assert list(majority_vote(np.array([[7, 4, 4, 7]]), tied)) == [7]
    assert list(majority_vote(np.array([[4, 7, 7, 4]]), tied)) == [4]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_matches_brute_numpy_and_chunking(metric: str) -> None:
    rng = np.random.default_rng(0)
    queries = l2_normalize(rng.normal(size=(53, 12)).astype(np.float32))
    gallery = l2_normalize(rng.normal(size=(211, 12)).astype(np.float32))
    if metric == "cosine":
        reference_scores = queries @ gallery.T
    else:
        reference_scores = -np.linalg.norm(queries[:, None, :] - gallery[None, :, :], axis=2)
    reference = np.argsort(-reference_scores, axis=1, kind="stable")[:, :7]
    idx, scores = search(queries, ExactIndex(gallery, metric), 7)
    np.testing.assert_array_equal(idx, reference)
    np.testing.assert_allclose(scores, np.take_along_axis(reference_scores, reference, 1), atol=1e-5)
    chunked, _ = search(queries, ExactIndex(gallery, metric), 7, chunk_size=5)
    np.testing.assert_array_equal(chunked, idx)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_faiss_flat_returns_the_exact_neighbours(metric: str) -> None:
    rng = np.random.default_rng(3)
    gallery = l2_normalize(rng.normal(size=(700, 24)))
    queries = l2_normalize(rng.normal(size=(90, 24)))
    flat = FaissIndex(gallery, metric, FaissParams(type="flat"))
    exact_idx, exact_scores = search(queries, ExactIndex(gallery, metric), 10)
    faiss_idx, faiss_scores = search(queries, flat, 10, chunk_size=32)
    np.testing.assert_array_equal(faiss_idx, exact_idx)
    np.testing.assert_allclose(faiss_scores, exact_scores, atol=1e-5)


def test_faiss_excludes_self_by_id_like_exact_search() -> None:
    rng = np.random.default_rng(4)
    vectors = l2_normalize(rng.normal(size=(200, 8)))
    ids = np.array([f"img{i}" for i in range(200)])
    queries, query_ids = vectors[:50], ids[:50]  # every query is also in the gallery
    flat = FaissIndex(vectors, "cosine", FaissParams(type="flat"), gallery_ids=ids)
    exact = search(queries, ExactIndex(vectors, gallery_ids=ids), 5, query_ids=query_ids)
    approx = search(queries, flat, 5, query_ids=query_ids)
    np.testing.assert_array_equal(approx[0], exact[0])
    assert not np.any(approx[0] == np.arange(50)[:, None])


@pytest.mark.parametrize("kind", ["exact", "faiss"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_query_expansion_searches_the_average_of_each_query_and_its_neighbours(kind: str, metric: str) -> None:
    """Against NumPy: the query plus its top n (itself excluded by id) averaged, then searched again; flat faiss and
    exact search agree."""
    rng = np.random.default_rng(5)
    gallery = l2_normalize(rng.normal(size=(300, 10)))
    ids = np.array([f"img{i}" for i in range(300)])
    queries, query_ids = gallery[:40], ids[:40]  # each query is in the gallery and must not expand with itself
    index = build_index(gallery, metric, kind=kind, faiss=FaissParams(type="flat"), gallery_ids=ids, query_expansion=4)
    assert isinstance(index, ExpandedQueryIndex) and index.size == 300
    first, _ = search(queries, ExactIndex(gallery, metric, gallery_ids=ids), 4, query_ids=query_ids)
    expanded = queries + gallery[first].sum(1)
    expanded = l2_normalize(expanded) if metric == "cosine" else expanded / 5
    expected, _ = search(expanded, ExactIndex(gallery, metric, gallery_ids=ids), 6, query_ids=query_ids)
    found, scores = search(queries, index, 6, query_ids=query_ids)
    np.testing.assert_array_equal(found, expected)
    assert not np.any(found == np.arange(40)[:, None]) and np.isfinite(scores).all()


def test_query_expansion_rights_a_query_whose_nearest_neighbour_is_an_outlier() -> None:
    """A query of class 0 sits nearest one stray class-1 image, then five of its own class: searched once it
    finds the stray first; expanded with its 5 neighbours it lands amid its class and ranks all five first."""
    own = l2_normalize(np.array([[1.0, 0.30 + 0.02 * i, 0.0] for i in range(5)]))
    stray, far = l2_normalize(np.array([[1.0, 0.0, 0.05]])), l2_normalize(np.array([[0.0, 0.2, 1.0]] * 3))
    gallery = np.concatenate([stray, own, far]).astype(np.float32)
    labels = np.array([1, 0, 0, 0, 0, 0, 1, 1, 1])
    query = l2_normalize(np.array([[1.0, 0.01, 0.0]]))
    once, _ = search(query, build_index(gallery, "cosine"), 5)
    twice, _ = search(query, build_index(gallery, "cosine", query_expansion=5), 5)
    assert labels[once[0]].tolist() == [1, 0, 0, 0, 0]
    assert labels[twice[0]].tolist() == [0, 0, 0, 0, 0]


@pytest.mark.parametrize("seed", range(12))
def test_flat_faiss_equals_exact_at_every_depth_with_and_without_self(seed: int) -> None:
    """Random galleries of 1-9 images, some queries in the gallery, depths up to past the gallery size."""
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 10))
    gallery = l2_normalize(rng.normal(size=(size, 6)))
    ids = np.array([f"g{i}" for i in range(size)])
    outside = l2_normalize(rng.normal(size=(3, 6)))
    inside = rng.permutation(size)[: max(1, size // 2)]
    queries = np.concatenate([gallery[inside], outside])
    query_ids = np.concatenate([ids[inside], ["q0", "q1", "q2"]])
    metric = ("cosine", "euclidean")[seed % 2]
    flat = FaissIndex(gallery, metric, FaissParams(type="flat"), gallery_ids=ids)
    exact_index = ExactIndex(gallery, metric, gallery_ids=ids)
    for k in range(1, size + 3):
        exact = search(queries, exact_index, k, query_ids=query_ids)
        approx = search(queries, flat, k, query_ids=query_ids)
        np.testing.assert_array_equal(approx[0], exact[0], err_msg=f"size {size} k {k}")
        np.testing.assert_allclose(approx[1], exact[1], atol=1e-5, err_msg=f"size {size} k {k}")


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_faiss_approximate_indexes_recall_and_metrics(kind: str) -> None:
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(20, 32))
    labels = rng.integers(0, 20, size=3000)
    vectors = l2_normalize(centres[labels] + 0.6 * rng.normal(size=(3000, 32)))
    gallery, queries = vectors[:2500], vectors[2500:]
    index = FaissIndex(gallery, "cosine", FaissParams(type=kind, nlist=16, nprobe=8))
    exact_idx, _ = search(queries, ExactIndex(gallery), 5)
    approx_idx, _ = search(queries, index, 5)
    recall = np.mean([len(set(a) & set(e)) / 5 for a, e in zip(approx_idx, exact_idx, strict=True)])
    assert recall >= 0.9
    names = [str(c) for c in range(20)]
    exact_report = evaluate_retrieval(queries, labels[2500:], ExactIndex(gallery), labels[:2500], names, k=5)
    approx_report = evaluate_retrieval(queries, labels[2500:], index, labels[:2500], names, k=5)
    assert abs(approx_report.metrics["map@5"] - exact_report.metrics["map@5"]) < 0.02


def test_an_approximate_index_is_searched_k_max_deep_and_reports_no_r_metrics() -> None:
    """MAP@R would ask an approximate index for each query's R nearest (11,900 in the cost curve's largest point,
    slower than exact search); evaluate asks it for k_max only, and every top-k metric stays the same."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, size=600)
    vectors = l2_normalize(rng.normal(size=(4, 16))[labels] + 0.9 * rng.normal(size=(600, 16)))
    asked = []

    class Recording(ExactIndex):
        def top_k(self, queries, k, query_ids=None):
            asked.append(k)
            return super().top_k(queries, k, query_ids)

    names = ["a", "b", "c", "d"]
    deep = evaluate_retrieval(vectors[500:], labels[500:], Recording(vectors[:500]), labels[:500], names, k=5)
    assert max(asked) == np.bincount(labels[:500]).max()  # R of the largest class
    asked.clear()
    shallow = evaluate_retrieval(
        vectors[500:], labels[500:], Recording(vectors[:500]), labels[:500], names, k=5, k_max=20, r_deep=False
    )
    assert max(asked) == 20
    assert shallow.metrics == {key: v for key, v in deep.metrics.items() if key not in ("map@r", "r_precision")}
    np.testing.assert_array_equal(shallow.neighbours, deep.neighbours)


def test_map_at_r_and_r_precision_equal_a_brute_force_reference() -> None:
    """Random galleries with uneven class sizes, chunked search, and one class absent from the gallery."""
    rng = np.random.default_rng(5)
    gallery = l2_normalize(rng.normal(size=(60, 8)))
    gallery_labels = rng.choice(4, size=60, p=[0.5, 0.3, 0.2, 0.0])
    queries = l2_normalize(rng.normal(size=(15, 8)))
    query_labels = rng.integers(0, 4, size=15)
    report = evaluate_retrieval(
        queries, query_labels, ExactIndex(gallery), gallery_labels, ["a", "b", "c", "d"], k=5, k_max=5, chunk_size=4
    )
    map_r, r_prec = [], []
    for query, label in zip(queries, query_labels, strict=True):
        relevant = gallery_labels[np.argsort(-(gallery @ query), kind="stable")] == label
        r = int((gallery_labels == label).sum())
        if r == 0:
            map_r.append(0.0)
            r_prec.append(0.0)
            continue
        hits = relevant[:r]
        precision_at_i = np.cumsum(hits) / np.arange(1, r + 1)
        map_r.append(float((precision_at_i * hits).sum() / r))
        r_prec.append(float(hits.sum() / r))
    assert report.metrics["map@r"] == pytest.approx(np.mean(map_r), abs=1e-6)
    assert report.metrics["r_precision"] == pytest.approx(np.mean(r_prec), abs=1e-6)
    assert 0 < report.metrics["map@r"] < report.metrics["r_precision"] < 1


def test_a_deep_hnsw_search_leaves_the_index_as_configured() -> None:
    """HNSW returns at most efSearch results, so a deeper query searches deeper, for that call only: one k=100
    request must not slow every later search."""
    gallery = l2_normalize(np.random.default_rng(0).normal(size=(400, 8)))
    index = FaissIndex(gallery, "cosine", FaissParams(type="hnsw", ef_search=16))
    idx, scores = index.top_k(gallery[:3], 150)
    assert idx.shape == (3, 150) and (idx >= 0).all() and np.isfinite(scores).all()
    assert index.index.hnsw.efSearch == 16
    assert (index.top_k(gallery[:3], 5)[0][:, 0] == [0, 1, 2]).all()


def test_evaluate_names_a_collapsed_and_a_below_raw_pixels_model(capsys) -> None:
    """The health written beside each model's mAP: a constant embedding is ``collapsed``, a model ranking worse than
    the flattened pixels is ``below raw pixels``, each named in one line; the protocol says how it was measured."""
    from embedlab.core.params import EvaluateParams
    from embedlab.embed.embeddings import EmbeddingSet
    from embedlab.retrieval.evaluation import check_health, evaluate_model, protocol, protocol_line

    rng = np.random.default_rng(0)
    labels = np.arange(120) % 4
    splits = np.repeat(["train", "val", "test"], [60, 20, 40])
    centres = rng.normal(size=(4, 16))

    def model(vectors: np.ndarray) -> EmbeddingSet:
        ids = np.array([f"i{i}" for i in range(120)])
        return EmbeddingSet(l2_normalize(vectors), ids, labels, splits, np.array(["a", "b", "c", "d"]))

    params = EvaluateParams(k=5)
    raw, _ = evaluate_model(model(centres[labels] + 0.9 * rng.normal(size=(120, 16))), params)
    good, _ = evaluate_model(model(centres[labels] + 0.3 * rng.normal(size=(120, 16))), params)
    poor, _ = evaluate_model(model(centres[labels] + 3.0 * rng.normal(size=(120, 16))), params)
    flat, _ = evaluate_model(model(np.ones((120, 16))), params)
    assert good["map@5"] > raw["map@5"] > poor["map@5"] and flat["cosine_sd"] == 0.0
    assert check_health("good", good, raw, 5) == "ok" and capsys.readouterr().out == ""
    assert check_health("poor", poor, raw, 5) == "below raw pixels"
    assert capsys.readouterr().out == (
        f"evaluate: warning: poor ranks below raw pixels: map@5 {poor['map@5']:.4f}, raw pixels {raw['map@5']:.4f}\n"
    )
    assert check_health("flat", flat, raw, 5) == "collapsed"
    assert capsys.readouterr().out.startswith("evaluate: warning: flat has collapsed (cosine similarity between")
    assert check_health("raw_pixels", raw, None, 5) == "ok"
    measured = protocol(good, params)
    assert measured == {
        "queries": 40, "gallery": 60, "gallery_splits": "train", "index": "exact", "metric": "cosine",
        "query_expansion": 0,
    }  # fmt: skip
    assert protocol_line(measured) == "40 test vs 60 train, exact cosine"
    expanded = protocol(good, params.model_copy(update={"query_expansion": 10}))
    assert protocol_line(expanded) == "40 test vs 60 train, exact cosine, query expansion 10"
