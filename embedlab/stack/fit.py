"""Fitting a stacker on the validation split (the methods are described in :mod:`embedlab.stack.stacker`).

Learned stackers are fitted on the **validation** split only: the base models were trained on the train split, so
their train embeddings are tighter than anything unseen and a stacker fitted on them would learn to trust an
overfitted backbone. :func:`fit_stacker` refuses any other split.
"""

from __future__ import annotations

import numpy as np

from embedlab.core.errors import UserError
from embedlab.core.params import StackParams
from embedlab.embed.embeddings import EmbeddingSet
from embedlab.retrieval.metrics import average_precision_at_k, relevant_counts
from embedlab.retrieval.probe import linear_probe_accuracy
from embedlab.retrieval.spread import cosine_spread
from embedlab.stack.stacker import Stacker


def check_aligned(sets: dict[str, EmbeddingSet]) -> EmbeddingSet:
    """The backbones' files must describe the same images in the same order; return one as the reference."""
    names = list(sets)
    first = sets[names[0]]
    for name in names[1:]:
        other = sets[name]
        if not (np.array_equal(first.ids, other.ids) and np.array_equal(first.splits, other.splits)):
            raise UserError(f"{name} and {names[0]} embeddings cover different images; rerun their embed@ stages")
    return first


def fit_stacker(
    backbones: list[str],
    blocks: list[np.ndarray],
    *,
    labels: np.ndarray,
    splits: np.ndarray,
    params: StackParams,
    num_classes: int,
) -> tuple[Stacker, dict[str, float]]:
    """Fit ``stack.method`` on validation rows only (asserted): ``blocks``/``labels``/``splits`` must already be
    the val subset. Returns the stacker and what the fit reports (weights, explained variance, final loss)."""
    if not np.all(splits == "val"):
        raise AssertionError("the stacker may only be fitted on validation-split embeddings")
    match params.method:
        case "concat":
            return Stacker("concat", backbones), {}
        case "pca":
            return _fit_pca(backbones, blocks, params)
        case "select":
            return _fit_select(backbones, blocks, labels, params)
        case "weighted" | "mlp":
            from embedlab.stack.network import fit_network

            stacker, report = fit_network(backbones, blocks, labels=labels, params=params, num_classes=num_classes)
            if params.method == "weighted":
                spreads = np.array([cosine_spread(b, seed=params.seed).sd for b in blocks])
                shares = stacker.arrays["weights"] * spreads / (stacker.arrays["weights"] * spreads).sum()
                report |= {f"weight_{name}": round(float(w), 6) for name, w in zip(backbones, shares, strict=True)}
            return stacker, report
        case other:
            raise ValueError(f"unknown stack.method {other!r}")


def _fit_pca(backbones: list[str], blocks: list[np.ndarray], params: StackParams) -> tuple[Stacker, dict[str, float]]:
    x = np.concatenate(blocks, axis=1).astype(np.float64)
    mean = x.mean(0)
    # Right singular vectors of the centred data; at most n-1 components carry variance.
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    dim = min(params.dim, len(x) - 1, x.shape[1])
    variance = singular[:dim] ** 2 / max(len(x) - 1, 1)
    projection = vt[:dim].T / np.sqrt(variance + params.whiten_shrinkage * variance.mean() + 1e-12)
    explained = float(variance.sum() / max((singular**2).sum() / max(len(x) - 1, 1), 1e-12))
    stacker = Stacker("pca", backbones, {"mean": mean.astype(np.float32), "projection": projection.astype(np.float32)})
    return stacker, {"dim": dim, "explained_variance": round(explained, 6)}


SELECT_GRID = (0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
SELECT_MAX_QUERIES = 2000  # validation queries scored per candidate (all validation images stay the gallery)
SELECT_MAX_PASSES = 10


def leave_one_out_map(
    similarity: np.ndarray, query_rows: np.ndarray, *, labels: np.ndarray, num_relevant: np.ndarray, k: int
) -> float:
    """mAP@k of ``query_rows`` (rows of ``similarity``) against every validation image but the query itself;
    ``num_relevant`` is each query's R, the same for every weighting tried, so the caller counts it once."""
    sims = similarity.copy()
    sims[np.arange(len(query_rows)), query_rows] = -np.inf
    k = min(k, sims.shape[1] - 1)
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable"), 1)
    relevant = labels[order] == labels[query_rows][:, None]
    return float(average_precision_at_k(relevant, num_relevant, k).mean())


def _fit_select(
    backbones: list[str], blocks: list[np.ndarray], labels: np.ndarray, params: StackParams
) -> tuple[Stacker, dict[str, float]]:
    """Coordinate ascent over each block's *share*: its weight times the spread of its similarities. A block whose
    similarities vary little moves the ranking little at any weight, so a raw weight says nothing about what the
    stack uses; searched and reported as shares, a weight is what the block contributes to the stacked ranking."""
    rng = np.random.default_rng(params.seed)
    queries = np.sort(rng.permutation(len(labels))[:SELECT_MAX_QUERIES])
    spreads = [max(cosine_spread(b, seed=params.seed).sd, 1e-12) for b in blocks]
    grams = [
        np.asarray(b[queries], np.float32) @ np.asarray(b, np.float32).T / np.float32(sd)
        for b, sd in zip(blocks, spreads, strict=True)
    ]
    everyone = np.arange(len(labels))  # the gallery is every validation row, the queries among them
    num_relevant = relevant_counts(
        labels[queries], labels, int(labels.max()) + 1, query_ids=queries, gallery_ids=everyone
    )

    def score(shares: np.ndarray) -> float:
        combined = sum(w * g for w, g in zip(shares, grams, strict=True) if w)
        return leave_one_out_map(combined, queries, labels=labels, num_relevant=num_relevant, k=params.select_k)

    singles = [score(np.eye(len(blocks))[b]) for b in range(len(blocks))]
    best = int(np.argmax(singles))
    shares, best_score = np.eye(len(blocks))[best], singles[best]
    for _ in range(SELECT_MAX_PASSES):  # coordinate ascent until a pass changes nothing
        improved = False
        for b in range(len(blocks)):
            for value in SELECT_GRID:
                trial = shares.copy()
                trial[b] = value
                if not trial.any() or value == shares[b]:
                    continue
                trial_score = score(trial)
                if trial_score > best_score + 1e-6:
                    shares, best_score, improved = trial, trial_score, True
        if not improved:
            break
    shares = shares / shares.sum()
    weights = shares / np.asarray(spreads)  # what scales each block, so that its similarities count by its share
    metrics = {
        "val_map_best_single": round(singles[best], 6),
        "val_map_stack": round(best_score, 6),
        **{f"weight_{name}": round(float(w), 6) for name, w in zip(backbones, shares, strict=True)},
    }
    return Stacker("select", backbones, {"weights": (weights / weights.sum()).astype(np.float32)}), metrics


def stack_embeddings(sets: dict[str, EmbeddingSet], params: StackParams) -> tuple[EmbeddingSet, Stacker, dict]:
    """Fit the stacker on the validation rows and apply it to every image: the stacked embeddings, the stacker and
    the fit's report (method, rows, and what the method reports: weights, explained variance, final loss)."""
    reference = check_aligned(sets)
    val = reference.split("val")
    if len(val) < 2 or len(np.unique(reference.labels[val])) < 2:
        raise UserError("the stacker needs validation images of at least two classes (data.val_fraction)")
    backbones, collapsed = _ranking_backbones(sets, val, seed=params.seed)
    blocks = [sets[name].embeddings for name in backbones]
    stacker, fit_metrics = fit_stacker(
        backbones,
        [b[val] for b in blocks],
        labels=reference.labels[val],
        splits=reference.splits[val],
        params=params,
        num_classes=len(reference.class_names),
    )
    stacked = stacker.transform(blocks)
    out = EmbeddingSet(stacked, reference.ids, reference.labels, reference.splits, reference.class_names)
    if collapsed:
        fit_metrics["left_out"] = ", ".join(collapsed)
        if any(key.startswith("weight_") for key in fit_metrics):  # a method that weighs: the left-out weigh 0
            fit_metrics.update({f"weight_{name}": 0.0 for name in collapsed})
    return out, stacker, {"method": params.method, "fit_rows": len(val), **fit_metrics}


def _ranking_backbones(sets: dict[str, EmbeddingSet], val: np.ndarray, *, seed: int) -> tuple[list[str], list[str]]:
    """The backbones to stack, and those left out because their validation embeddings collapsed (each named in one
    line): a collapsed block only adds a near-constant to every similarity, so whatever weight a stacker gave it
    would describe nothing the stack does. If every backbone collapsed, all are kept: there is nothing better."""
    collapsed = []
    for name, emb in sets.items():
        spread = cosine_spread(emb.embeddings[val], seed=seed)
        if spread.collapsed:
            collapsed.append(name)
            print(f"stack: {name} left out: its validation embeddings have collapsed ({spread.describe()})")
    if len(collapsed) == len(sets):
        print("stack: every backbone collapsed; stacking them all (expect the stack to rank poorly)")
        return list(sets), []
    return [name for name in sets if name not in collapsed], collapsed


def stack_metrics(stacked: EmbeddingSet, fit_report: dict, *, seed: int) -> dict:
    """``reports/stack.json``: the fit's report, the stacked dimension, and the test accuracy of a linear probe
    fitted on the stacked validation embeddings (the stack has no softmax head of its own)."""
    val, test, vectors = stacked.split("val"), stacked.split("test"), stacked.embeddings
    metrics = {
        **fit_report,
        "dim": int(vectors.shape[1]),
        "test_accuracy": linear_probe_accuracy(
            vectors[val], stacked.labels[val], vectors[test], stacked.labels[test], seed=seed
        ),
    }
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}
