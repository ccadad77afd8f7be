"""The evaluate stage's logic: retrieval metrics per model, the DVC plot data and the example collages.

Models are the backbones of ``params.yaml``, ``stack``, and ``raw_pixels`` (the L2-normalised flattened prepared
image), the baseline that shows what the CNNs add. Queries are the test split; the gallery is ``evaluate.gallery``.
Everything here returns data; ``stages/evaluate.py`` writes it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from embedlab.core.params import EvaluateParams
from embedlab.data.prepared import Prepared
from embedlab.embed.embeddings import EmbeddingSet
from embedlab.retrieval.collage import Tile, draw_collage
from embedlab.retrieval.index import build_index
from embedlab.retrieval.metrics import RetrievalReport, evaluate_retrieval
from embedlab.retrieval.probe import linear_probe_accuracy
from embedlab.retrieval.spread import Spread, cosine_spread, health


def gallery_rows(emb: EmbeddingSet, gallery: Literal["train", "train+val"]) -> np.ndarray:
    """Rows of the gallery that ``evaluate.gallery`` names."""
    if gallery not in ("train", "train+val"):
        raise ValueError(f"unknown evaluate.gallery {gallery!r}")
    return emb.rows(gallery)


def stack_gain(stack: dict[str, float], backbones: list[dict[str, float]], k: int) -> float:
    """What the stack adds: its mAP@k minus its best member's (negative: it costs)."""
    return round(stack[f"map@{k}"] - max(m[f"map@{k}"] for m in backbones), 6)


def evaluate_model(emb: EmbeddingSet, params: EvaluateParams) -> tuple[dict[str, float], RetrievalReport]:
    """One model's metrics (rounded, as written to ``reports/retrieval/<model>.json``) and its full report."""
    queries, gallery = emb.split("test"), gallery_rows(emb, params.gallery)
    index = build_index(
        emb.embeddings[gallery],
        params.metric,
        kind=params.index,
        faiss=params.faiss,
        gallery_ids=emb.ids[gallery],
        query_expansion=params.query_expansion,
    )
    report = evaluate_retrieval(
        emb.embeddings[queries],
        emb.labels[queries],
        index,
        emb.labels[gallery],
        list(emb.class_names),
        k=params.k,
        k_max=params.k_max,
        query_ids=emb.ids[queries],
        gallery_ids=emb.ids[gallery],
        r_deep=params.index == "exact" or params.faiss.type == "flat",  # exhaustive: R deep costs what exact does
    )
    probe = linear_probe_accuracy(
        emb.embeddings[gallery], emb.labels[gallery], emb.embeddings[queries], emb.labels[queries], seed=params.seed
    )
    spread = cosine_spread(emb.embeddings[queries], seed=params.seed)
    metrics = {
        **report.metrics,
        "linear_probe_accuracy": probe,
        "cosine_mean": spread.mean,
        "cosine_sd": spread.sd,
        "queries": len(queries),
        "gallery": len(gallery),
    }
    return {key: round(value, 6) for key, value in metrics.items()}, report


def protocol(metrics: dict[str, float], params: EvaluateParams) -> dict[str, int | str]:
    """How a model's figures were measured, so that two runs can be compared without reading their params: the test
    split's ``queries`` images searched against ``gallery`` images of ``gallery_splits`` with ``index`` by
    ``metric``, and ``query_expansion`` neighbours averaged into each query (0: searched once)."""
    return {
        "queries": int(metrics["queries"]),
        "gallery": int(metrics["gallery"]),
        "gallery_splits": params.gallery,
        "index": "exact" if params.index == "exact" else f"faiss {params.faiss.type}",
        "metric": params.metric,
        "query_expansion": params.query_expansion,
    }


def protocol_line(measured: dict[str, int | str]) -> str:
    """The :func:`protocol` as one short value (``360 test vs 1437 train+val, exact cosine``): one column of
    ``dvc metrics show`` instead of five, and ``dvc metrics diff`` still lists it when it changes."""
    expansion = f", query expansion {measured['query_expansion']}" if measured.get("query_expansion") else ""
    return (
        f"{measured['queries']} test vs {measured['gallery']} {measured['gallery_splits']}, "
        f"{measured['index']} {measured['metric']}{expansion}"
    )


def check_health(name: str, metrics: dict[str, float], raw_pixels: dict[str, float] | None, k: int) -> str:
    """``health`` of a model's metrics (:func:`embedlab.retrieval.spread.health`); a model that is not ``ok`` is
    named in one line: a collapsed or below-raw-pixels model is what a user must see before reading its mAP."""
    spread = Spread(metrics["cosine_mean"], metrics["cosine_sd"])
    key = f"map@{k}"
    verdict = health(spread, metrics[key], raw_pixels[key] if raw_pixels is not None else None)
    against = f", raw pixels {raw_pixels[key]:.4f}" if raw_pixels is not None else ""
    if verdict == "collapsed":
        print(f"evaluate: warning: {name} has collapsed ({spread.describe()}): {key} {metrics[key]:.4f}{against}")
    elif verdict != "ok":
        print(f"evaluate: warning: {name} ranks below raw pixels: {key} {metrics[key]:.4f}{against}")
    return verdict


def map_at_k_rows(model: str, report: RetrievalReport) -> list[dict]:
    """``plots/retrieval/map_at_k.json`` rows of one model: mAP@k for k = 1 … k_max."""
    return [{"model": model, "k": i + 1, "map": round(v, 6)} for i, v in enumerate(report.map_at_k_curve)]


def per_class_rows(model: str, report: RetrievalReport) -> list[dict]:
    """``plots/retrieval/per_class_ap.json`` rows of one model: mAP@k per query class."""
    return [{"model": model, "class": c, "ap": round(v, 6)} for c, v in report.per_class_ap.items()]


def confusion_rows(emb: EmbeddingSet, report: RetrievalReport) -> list[dict]:
    """``plots/retrieval/confusion/<model>.json``: each test query's class against its kNN vote."""
    names = np.asarray(emb.class_names)
    actual = names[emb.labels[emb.split("test")]]
    return [{"actual": str(a), "predicted": str(p)} for a, p in zip(actual, names[report.knn_predictions], strict=True)]


def draw_examples(prepared: Prepared, emb: EmbeddingSet, report: RetrievalReport, params: EvaluateParams, title: str):
    """A fixed, seeded set of queries, each with its top k and their scores; wrong results framed in red."""
    queries, gallery = emb.split("test"), gallery_rows(emb, params.gallery)
    count = min(params.examples, len(queries))
    picks = np.sort(np.random.default_rng(params.seed).choice(len(queries), size=count, replace=False))
    position = {image_id: row for row, image_id in enumerate(prepared.index["id"])}

    def pixels(row: int) -> np.ndarray:
        return prepared.images[position[emb.ids[row]]]

    rows = []
    for q in picks:
        query = queries[q]
        tiles = [Tile(pixels(query), f"query: {emb.class_names[emb.labels[query]]}", bold=True)]
        for g, score in zip(report.neighbours[q, : params.k], report.scores[q, : params.k], strict=True):
            correct = bool(emb.labels[gallery[g]] == emb.labels[query])
            caption = f"{float(score):.3f} {emb.class_names[emb.labels[gallery[g]]]}" + ("" if correct else " ✗")
            tiles.append(Tile(pixels(gallery[g]), caption, correct))
        rows.append(tiles)
    return draw_collage(rows, f"{title}: query → top {params.k} ({params.metric})", cell=(1.7, 1.9))
