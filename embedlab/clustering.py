"""The cluster stage: K-Means quality metrics and 2-D maps (t-SNE, PCA) of each model's test-split embeddings.

Metrics per model (``metrics/cluster/<model>.json``): NMI and ARI between K-Means clusters and true classes,
purity (share of images whose cluster's majority class is their own class) and the cosine silhouette of the
K-Means clusters. 2-D maps are drawn from a per-class sample (every class shows even when unbalanced) as a PNG
with two panels (true class | K-Means cluster) and as a JSON scatter for ``dvc plots show/diff``.

t-SNE (Barnes-Hut) costs O(n log n) in the sample size n: ~1,000 points take a few seconds on 2 cores, 10,000 about
ten times as long; ``cluster.tsne.sample`` bounds it whatever the dataset size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedlab.embeddings import EmbeddingSet
from embedlab.errors import UserError
from embedlab.fsutil import write_json
from embedlab.params import ClusterParams


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Share of points whose cluster's most common true label is their own."""
    total = 0
    for cluster in np.unique(clusters):
        total += np.bincount(labels[clusters == cluster]).max()
    return float(total / len(labels))


def kmeans(vectors: np.ndarray, k: int, n_init: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(np.asarray(vectors, np.float64))


def cluster_metrics(vectors: np.ndarray, labels: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

    silhouette = (
        float(silhouette_score(vectors, clusters, metric="cosine"))
        if 1 < len(np.unique(clusters)) < len(vectors)
        else 0.0
    )
    return {
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ari": float(adjusted_rand_score(labels, clusters)),
        "purity": purity(labels, clusters),
        "silhouette": silhouette,
    }


def sample_per_class(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Up to ``size`` row indices, drawn as evenly across classes as their counts allow; sorted."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    chosen: list[int] = []
    depth = 0
    while len(chosen) < min(size, len(labels)):
        for c in classes:
            if depth < len(pools[c]) and len(chosen) < size:
                chosen.append(int(pools[c][depth]))
        depth += 1
    return np.sort(np.asarray(chosen, np.int64))


def tsne_2d(vectors: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = min(perplexity, max(1.0, (len(vectors) - 1) / 3))  # t-SNE needs perplexity < n
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", metric="cosine", random_state=seed)
    return tsne.fit_transform(np.asarray(vectors, np.float64)).astype(np.float32)


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    centred = np.asarray(vectors, np.float64) - np.mean(vectors, axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[:2].T).astype(np.float32)


def draw_map(
    coords: np.ndarray, labels: np.ndarray, clusters: np.ndarray, class_names: list[str], title: str, out: Path
) -> None:
    """Two panels: points coloured by true class (with a legend of class names) and by K-Means cluster."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5.4))
    for c, name in enumerate(class_names):
        mask = labels == c
        if mask.any():
            left.scatter(*coords[mask].T, s=7, color=cmap(c % cmap.N), label=name)
    left.set_title("true class")
    left.legend(markerscale=2.5, fontsize=7, loc="best", ncol=2 if len(class_names) > 10 else 1)
    for cluster in np.unique(clusters):
        mask = clusters == cluster
        right.scatter(*coords[mask].T, s=7, color=cmap(int(cluster) % cmap.N))
    right.set_title(f"K-Means ({len(np.unique(clusters))} clusters)")
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def run_clustering(
    sets: dict[str, EmbeddingSet],
    params: ClusterParams,
    metrics_dir: str | Path = "metrics/cluster",
    plots_dir: str | Path = "plots/cluster",
) -> dict[str, dict[str, float]]:
    metrics_dir, plots_dir = Path(metrics_dir), Path(plots_dir)
    methods = params.method.split("+")
    test_images = len(next(iter(sets.values())).split("test"))
    if params.k and params.k > test_images:
        raise UserError(f"cluster.k: {params.k} clusters for {test_images} test images; use at most {test_images}")
    results = {}
    for name, emb in sets.items():
        test = emb.split("test")
        vectors, labels = np.asarray(emb.embeddings[test], np.float32), emb.labels[test]
        k = params.k or len(emb.class_names)
        clusters = kmeans(vectors, k, params.n_init, params.seed)
        metrics = {key: round(value, 6) for key, value in cluster_metrics(vectors, labels, clusters).items()}
        results[name] = metrics
        write_json(metrics_dir / f"{name}.json", metrics)
        sample = sample_per_class(labels, params.tsne.sample, params.tsne.seed)
        class_names = [str(c) for c in emb.class_names]
        for method in methods:
            coords = (
                tsne_2d(vectors[sample], params.tsne.perplexity, params.tsne.seed)
                if method == "tsne"
                else (pca_2d(vectors[sample]))
            )
            draw_map(
                coords,
                labels[sample],
                clusters[sample],
                class_names,
                f"{name}: {method} of the test split",
                plots_dir / f"{name}_{method}.png",
            )
            write_json(
                plots_dir / method / f"{name}.json",
                [
                    {
                        "x": round(float(x), 4),
                        "y": round(float(y), 4),
                        "class": class_names[c],
                        "cluster": f"cluster {int(g)}",
                        "id": str(i),
                    }
                    for (x, y), c, g, i in zip(
                        coords, labels[sample], clusters[sample], emb.ids[test][sample], strict=True
                    )
                ],
            )
    return results
