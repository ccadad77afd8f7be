"""The stacking ensemble: one embedding from several backbones' embeddings.

Methods (``stack.method``):

* ``concat``: the backbones' unit embeddings side by side, scaled by 1/√B, so cosine similarity is the mean of the
  backbones' cosine similarities. Nothing is fitted.
* ``pca``: the concatenation, centred and PCA-whitened to ``stack.dim`` components, then L2-normalised. Whitening
  divides each component by √(variance + s·mean variance), s = ``stack.whiten_shrinkage``: plain whitening (s = 0)
  blows the many low-variance, within-class noise directions up to the size of the class-separating ones (measured
  on digits: MAP@R 0.39 at 128 components, 0.99 with s = 1).
* ``weighted``: one learned non-negative weight per backbone (softmax of free logits); cosine similarity becomes the
  weighted mean of the backbones' cosine similarities.
* ``mlp``: a small meta-network (dense → ReLU → dense → L2) trained with the same losses as ``train``.
* ``select`` (default): per-backbone weights chosen by what the stack is for, retrieval. Each validation image
  queries the other validation images; starting from the best single backbone (weight 1, others 0), coordinate
  ascent tries each backbone at each weight of :data:`SELECT_GRID` and keeps a change only when the validation
  mAP@``stack.select_k`` rises. So on the validation split the stack is never worse than its best member, and a
  backbone that only adds noise keeps weight 0. Cosine similarity becomes Σ w_b·cos_b / Σ w_b, as in ``weighted``.

Learned stackers (pca, weighted, mlp) are fitted on the **validation** split only: the base models were trained on
the train split, so their train embeddings are tighter than anything unseen and a stacker fitted on them would
learn to trust an overfitted backbone. :func:`fit_stacker` refuses any other split.

A fitted :class:`Stacker` is a few NumPy arrays (``models/stack.npz``) and applies to new images in NumPy, which
is how ``embedlab search --model stack`` embeds a query: each base model, then the stacker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from embedlab.embeddings import EmbeddingSet, l2_normalize
from embedlab.errors import UserError
from embedlab.fsutil import write_npz
from embedlab.params import StackParams
from embedlab.probe import linear_probe_accuracy
from embedlab.retrieval_metrics import average_precision_at_k, relevant_counts

Method = Literal["select", "concat", "pca", "weighted", "mlp"]


@dataclass
class Stacker:
    """A fitted stacker: the method, the backbones in order, and the arrays that apply it to new embeddings."""

    method: Method
    backbones: list[str]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def contributing(self) -> list[str]:
        """The backbones whose embeddings change the result: ``select`` and ``weighted`` may give a backbone weight 0,
        and its block is then multiplied by 0, so a caller may pass zeros instead of running it."""
        if self.method in ("weighted", "select"):
            return [name for name, w in zip(self.backbones, self.arrays["weights"], strict=True) if w > 0]
        return list(self.backbones)

    def transform(self, blocks: list[np.ndarray]) -> np.ndarray:
        """Combine the backbones' embeddings of the same images (one array per backbone, in order)."""
        if len(blocks) != len(self.backbones):
            raise ValueError(f"expected {len(self.backbones)} embedding blocks, got {len(blocks)}")
        x = np.concatenate([np.asarray(b, np.float32) for b in blocks], axis=1)
        match self.method:
            case "concat":
                return l2_normalize(x)
            case "weighted" | "select":
                widths_and_weights = zip(blocks, self.arrays["weights"], strict=True)
                scale = np.concatenate([np.full(b.shape[1], np.sqrt(w), np.float32) for b, w in widths_and_weights])
                return l2_normalize(x * scale)
            case "pca":
                return l2_normalize((x - self.arrays["mean"]) @ self.arrays["projection"])
            case "mlp":
                hidden = np.maximum(x @ self.arrays["w1"] + self.arrays["b1"], 0)
                return l2_normalize(hidden @ self.arrays["w2"] + self.arrays["b2"])
            case other:
                raise ValueError(f"unknown stack method {other!r}")

    def save(self, path: str | Path) -> None:
        """``models/stack.npz``: the method, the backbone names and the fitted arrays (no pickle)."""
        write_npz(
            path,
            {
                "method": np.asarray(self.method),
                "backbones": np.asarray(self.backbones, dtype=str),
                **{f"param_{k}": np.asarray(v, np.float32) for k, v in self.arrays.items()},
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> Stacker:
        """Read ``models/stack.npz``."""
        with np.load(path, allow_pickle=False) as data:
            arrays = {k.removeprefix("param_"): data[k] for k in data.files if k.startswith("param_")}
            return cls(str(data["method"]), [str(b) for b in data["backbones"]], arrays)


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
            from embedlab.stack_network import fit_network

            return fit_network(backbones, blocks, labels=labels, params=params, num_classes=num_classes)
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
    rng = np.random.default_rng(params.seed)
    queries = np.sort(rng.permutation(len(labels))[:SELECT_MAX_QUERIES])
    grams = [np.asarray(b[queries], np.float32) @ np.asarray(b, np.float32).T for b in blocks]
    everyone = np.arange(len(labels))  # the gallery is every validation row, the queries among them
    num_relevant = relevant_counts(
        labels[queries], labels, int(labels.max()) + 1, query_ids=queries, gallery_ids=everyone
    )

    def score(weights: np.ndarray) -> float:
        combined = sum(w * g for w, g in zip(weights, grams, strict=True) if w)
        return leave_one_out_map(combined, queries, labels=labels, num_relevant=num_relevant, k=params.select_k)

    singles = [score(np.eye(len(blocks))[b]) for b in range(len(blocks))]
    best = int(np.argmax(singles))
    weights, best_score = np.eye(len(blocks))[best], singles[best]
    for _ in range(SELECT_MAX_PASSES):  # coordinate ascent until a pass changes nothing
        improved = False
        for b in range(len(blocks)):
            for value in SELECT_GRID:
                trial = weights.copy()
                trial[b] = value
                if not trial.any() or value == weights[b]:
                    continue
                trial_score = score(trial)
                if trial_score > best_score + 1e-6:
                    weights, best_score, improved = trial, trial_score, True
        if not improved:
            break
    weights = (weights / weights.sum()).astype(np.float32)
    metrics = {
        "val_map_best_single": round(singles[best], 6),
        "val_map_stack": round(best_score, 6),
        **{f"weight_{name}": round(float(w), 6) for name, w in zip(backbones, weights, strict=True)},
    }
    return Stacker("select", backbones, {"weights": weights}), metrics


def stack_embeddings(sets: dict[str, EmbeddingSet], params: StackParams) -> tuple[EmbeddingSet, Stacker, dict]:
    """Fit the stacker on the validation rows and apply it to every image: the stacked embeddings, the stacker and
    the fit's report (method, rows, and what the method reports: weights, explained variance, final loss)."""
    backbones = list(sets)
    reference = check_aligned(sets)
    val = reference.split("val")
    if len(val) < 2 or len(np.unique(reference.labels[val])) < 2:
        raise UserError("the stacker needs validation images of at least two classes (data.val_fraction)")
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
    return out, stacker, {"method": params.method, "fit_rows": len(val), **fit_metrics}


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
