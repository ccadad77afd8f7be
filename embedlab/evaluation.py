"""The evaluate stage: retrieval metrics per model, DVC plot data and example collages.

Models are the backbones of ``params.yaml``, ``stack``, and ``raw_pixels`` (the L2-normalised flattened prepared
image), the baseline that shows what the CNNs add.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedlab.data.prepare import Prepared
from embedlab.embeddings import EmbeddingSet, load_sets
from embedlab.fsutil import write_json
from embedlab.params import EvaluateParams
from embedlab.retrieval import FaissIndex, RetrievalReport, evaluate_retrieval, linear_probe_accuracy


def gallery_rows(emb: EmbeddingSet, gallery: str) -> np.ndarray:
    if gallery == "train+val":
        return np.flatnonzero(np.isin(emb.splits, ["train", "val"]))
    return emb.split("train")


def evaluate_model(emb: EmbeddingSet, params: EvaluateParams) -> tuple[dict[str, float], RetrievalReport]:
    queries, gallery = emb.split("test"), gallery_rows(emb, params.gallery)
    index = FaissIndex(emb.embeddings[gallery], params.metric, params.faiss) if params.index == "faiss" else None
    report = evaluate_retrieval(
        emb.embeddings[queries],
        emb.labels[queries],
        emb.embeddings[gallery],
        emb.labels[gallery],
        list(emb.class_names),
        k=params.k,
        k_max=params.k_max,
        metric=params.metric,
        query_ids=emb.ids[queries],
        gallery_ids=emb.ids[gallery],
        index=index,
    )
    probe = linear_probe_accuracy(
        emb.embeddings[gallery], emb.labels[gallery], emb.embeddings[queries], emb.labels[queries], params.seed
    )
    metrics = {**report.metrics, "linear_probe_accuracy": probe, "queries": len(queries), "gallery": len(gallery)}
    return {key: round(value, 6) for key, value in metrics.items()}, report


def run_evaluation(
    params: EvaluateParams,
    models: list[str],
    root: str | Path = ".",
    metrics_dir: str | Path = "metrics/retrieval",
    plots_dir: str | Path = "plots/retrieval",
) -> dict[str, dict[str, float]]:
    prepared = Prepared.open(Path(root) / "data" / "prepared")
    sets = load_sets(models, prepared, root)
    plots_dir, metrics_dir = Path(plots_dir), Path(metrics_dir)
    curve_rows, class_rows, results = [], [], {}
    for name, emb in sets.items():
        metrics, report = evaluate_model(emb, params)
        results[name] = metrics
        write_json(metrics_dir / f"{name}.json", metrics)
        curve_rows += [{"model": name, "k": i + 1, "map": round(v, 6)} for i, v in enumerate(report.map_at_k_curve)]
        class_rows += [{"model": name, "class": c, "ap": round(v, 6)} for c, v in report.per_class_ap.items()]
        queries = emb.split("test")
        names = np.asarray(emb.class_names)
        write_json(
            plots_dir / "confusion" / f"{name}.json",
            [
                {"actual": str(a), "predicted": str(p)}
                for a, p in zip(names[emb.labels[queries]], names[report.knn_predictions], strict=True)
            ],
        )
        draw_examples(prepared, emb, report, params, plots_dir / "examples" / f"{name}_examples.png", name)
    write_json(plots_dir / "map_at_k.json", curve_rows)
    write_json(plots_dir / "per_class_ap.json", class_rows)
    return results


def draw_examples(
    prepared: Prepared,
    emb: EmbeddingSet,
    report: RetrievalReport,
    params: EvaluateParams,
    out: Path,
    title: str,
) -> None:
    """A fixed, seeded set of queries, each with its top k and their scores; wrong results framed in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    queries, gallery = emb.split("test"), gallery_rows(emb, params.gallery)
    picks = np.sort(
        np.random.default_rng(params.seed).choice(len(queries), size=min(params.examples, len(queries)), replace=False)
    )
    position = {image_id: row for row, image_id in enumerate(prepared.index["id"])}
    k = params.k
    fig, axes = plt.subplots(len(picks), k + 1, figsize=(1.7 * (k + 1), 1.9 * len(picks)), squeeze=False)
    for r, q in enumerate(picks):
        query_row = queries[q]
        cells = [(query_row, None, True)] + [
            (gallery[g], float(s), emb.labels[gallery[g]] == emb.labels[query_row])
            for g, s in zip(report.neighbours[q, :k], report.scores[q, :k], strict=True)
        ]
        for c, (row, score, correct) in enumerate(cells):
            ax = axes[r][c]
            ax.imshow(prepared.images[position[emb.ids[row]]], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            label = emb.class_names[emb.labels[row]]
            if score is None:
                ax.set_title(f"query: {label}", fontsize=7, fontweight="bold")
            else:
                ax.set_title(
                    f"{score:.3f} {label}" + ("" if correct else " ✗"), fontsize=7, color="black" if correct else "red"
                )
                for spine in ax.spines.values():
                    spine.set_edgecolor("tab:green" if correct else "red")
                    spine.set_linewidth(1 if correct else 3)
    fig.suptitle(f"{title}: query → top {k} ({params.metric})", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
