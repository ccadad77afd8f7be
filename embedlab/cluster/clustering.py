"""The cluster stage: K-Means quality metrics and 2-D maps (t-SNE, PCA) of each model's test-split embeddings.

Metrics per model (``reports/cluster/<model>.json``; NMI also in ``metrics/cluster/<model>.json``): NMI and ARI
between K-Means clusters and true classes, purity (share of images whose cluster's majority class is their own
class) and the cosine silhouette of the K-Means clusters. 2-D maps are drawn from a per-class sample (every class
shows even when unbalanced) as a PNG with two panels (true class | K-Means cluster) and as a JSON scatter for
``dvc plots show/diff``.

t-SNE (Barnes-Hut) costs O(n log n) in the sample size n: ~1,000 points take a few seconds on 2 cores, 10,000 about
ten times as long; ``cluster.tsne.sample`` bounds it whatever the dataset size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedlab.core.errors import UserError
from embedlab.core.params import ClusterParams
from embedlab.data.sampling import sample_per_class
from embedlab.embed.embeddings import EmbeddingSet


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Share of points whose cluster's most common true label is their own."""
    total = 0
    for cluster in np.unique(clusters):
        total += np.bincount(labels[clusters == cluster]).max()
    return float(total / len(labels))


def kmeans(vectors: np.ndarray, k: int, *, n_init: int, seed: int) -> np.ndarray:
    """K-Means cluster ids (the best of ``n_init`` seeded restarts)."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(np.asarray(vectors, np.float64))


def cluster_metrics(vectors: np.ndarray, labels: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    """NMI, ARI, purity and cosine silhouette of ``clusters`` against the true ``labels``."""
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


def tsne_2d(vectors: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    """A seeded Barnes-Hut t-SNE map (cosine), the perplexity capped below what the point count allows."""
    from sklearn.manifold import TSNE

    perplexity = min(perplexity, max(1.0, (len(vectors) - 1) / 3))  # t-SNE needs perplexity < n
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", metric="cosine", random_state=seed)
    return tsne.fit_transform(np.asarray(vectors, np.float64)).astype(np.float32)


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """The first two principal components: a linear, deterministic map to compare t-SNE's with."""
    centred = np.asarray(vectors, np.float64) - np.mean(vectors, axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[:2].T).astype(np.float32)


def draw_map(coords: np.ndarray, labels: np.ndarray, clusters: np.ndarray, class_names: list[str], title: str):
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
    return fig


@dataclass
class ModelClusters:
    """One model's clustering of the test split: metrics, and per map method the sampled points' coordinates."""

    metrics: dict[str, float]
    labels: np.ndarray  # test-split labels
    clusters: np.ndarray  # K-Means cluster of each test image
    ids: np.ndarray  # test-split image ids
    sample: np.ndarray  # rows of the test split drawn for the maps
    maps: dict[str, np.ndarray]  # method -> (len(sample), 2) coordinates


def cluster_model(emb: EmbeddingSet, params: ClusterParams) -> ModelClusters:
    """K-Means on the test split of one model's embeddings, its metrics, and the 2-D maps ``cluster.method`` names."""
    test = emb.split("test")
    if params.k and params.k > len(test):
        raise UserError(f"cluster.k: {params.k} clusters for {len(test)} test images; use at most {len(test)}")
    vectors, labels = np.asarray(emb.embeddings[test], np.float32), emb.labels[test]
    clusters = kmeans(vectors, params.k or len(emb.class_names), n_init=params.n_init, seed=params.seed)
    metrics = {key: round(value, 6) for key, value in cluster_metrics(vectors, labels, clusters).items()}
    sample = sample_per_class(labels, params.tsne.sample, params.tsne.seed)
    maps = {}
    for method in params.method.split("+"):
        match method:
            case "tsne":
                maps[method] = tsne_2d(vectors[sample], params.tsne.perplexity, params.tsne.seed)
            case "pca":
                maps[method] = pca_2d(vectors[sample])
            case other:
                raise ValueError(f"unknown cluster.method part {other!r}")
    return ModelClusters(metrics, labels, clusters, emb.ids[test], sample, maps)


def scatter_rows(result: ModelClusters, method: str, class_names: list[str]) -> list[dict]:
    """``plots/cluster/<method>/<model>.json``: one point per sampled image, for ``dvc plots``."""
    s = result.sample
    points = zip(result.maps[method], result.labels[s], result.clusters[s], result.ids[s], strict=True)
    return [
        {"x": round(float(x), 4), "y": round(float(y), 4), "class": class_names[c], "cluster": f"cluster {int(g)}",
         "id": str(i)}
        for (x, y), c, g, i in points
    ]  # fmt: skip


def draw_model_map(result: ModelClusters, method: str, class_names: list[str], title: str):
    """``plots/cluster/<model>_<method>.png``: the map coloured by true class and by K-Means cluster."""
    s = result.sample
    return draw_map(result.maps[method], result.labels[s], result.clusters[s], class_names, title)
