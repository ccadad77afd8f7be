"""The cluster and projector stages: clustering metrics, t-SNE, the projector files and TensorBoard serving them."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from embedlab.cluster.clustering import (
    cluster_metrics,
    cluster_model,
    draw_model_map,
    kmeans,
    purity,
    scatter_rows,
    tsne_2d,
)
from embedlab.cluster.projector import projector_run
from embedlab.core.errors import UserError
from embedlab.core.files import write_tree
from embedlab.core.params import ClusterParams, ProjectorParams, TsneParams
from embedlab.data.sampling import sample_per_class
from embedlab.embed.embeddings import EmbeddingSet, l2_normalize

from ..conftest import blob_embedding_set, blobs


def test_perfectly_separated_clusters_score_one() -> None:
    vectors, labels = blobs()
    clusters = kmeans(vectors, 4, n_init=4, seed=0)
    metrics = cluster_metrics(vectors, labels, clusters)
    assert metrics["nmi"] == pytest.approx(1.0) and metrics["ari"] == pytest.approx(1.0)
    assert metrics["purity"] == 1.0 and metrics["silhouette"] > 0.9


def test_random_clusters_score_about_zero() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, size=2000)
    metrics = cluster_metrics(l2_normalize(rng.normal(size=(2000, 16))), labels, rng.integers(0, 5, size=2000))
    assert abs(metrics["ari"]) < 0.01 and metrics["nmi"] < 0.01
    assert purity(labels, rng.integers(0, 5, size=2000)) < 0.3


def test_purity_hand_computed() -> None:
    # cluster 0 holds labels [0, 0, 1] (majority 2), cluster 1 holds [1, 2, 2] (majority 2): (2 + 2) / 6
    assert purity(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 0, 1, 1, 1])) == pytest.approx(4 / 6)


def test_sample_per_class_keeps_every_class() -> None:
    labels = np.array([0] * 500 + [1] * 5 + [2] * 50)
    picked = sample_per_class(labels, 30, seed=3)
    assert len(picked) == 30 and set(np.bincount(labels[picked])) == {5, 12, 13}
    np.testing.assert_array_equal(picked, sample_per_class(labels, 30, seed=3))
    assert len(sample_per_class(labels, 10_000, seed=3)) == len(labels)


@pytest.mark.slow
def test_tsne_shape_and_determinism() -> None:
    vectors, _ = blobs(per_class=25, spread=0.3)
    first, second = tsne_2d(vectors, 30, seed=7), tsne_2d(vectors, 30, seed=7)
    assert first.shape == (100, 2) and first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    assert tsne_2d(vectors[:6], 30, seed=7).shape == (6, 2)  # perplexity is capped below the sample size


def test_cluster_model_gives_metrics_maps_and_scatter_rows() -> None:
    params = ClusterParams(method="tsne+pca", tsne=TsneParams(sample=12, perplexity=5))
    result = cluster_model(blob_embedding_set(), params)
    assert set(result.metrics) == {"nmi", "ari", "purity", "silhouette"} and set(result.maps) == {"tsne", "pca"}
    for method in ("tsne", "pca"):
        figure = draw_model_map(result, method, ["cat", "dog", "eel"], "m")
        assert figure.get_size_inches()[0] * figure.dpi > 500
        rows = scatter_rows(result, method, ["cat", "dog", "eel"])
        assert len(rows) == 10 and {r["class"] for r in rows} == {"cat", "dog", "eel"}  # 10 test rows < sample
        assert set(rows[0]) == {"x", "y", "class", "cluster", "id"}


class _FakePrepared:
    """What projector_run reads from data/prepared: images in index order and their ids."""

    def __init__(self, emb: EmbeddingSet) -> None:
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 255, size=(len(emb.ids), 20, 20, 3), dtype=np.uint8)
        self.index = pd.DataFrame({"id": emb.ids[::-1]})  # a different order than the embeddings file
        self.images_by_id = dict(zip(self.index["id"], self.images, strict=True))


def test_projector_files(tmp_path: Path) -> None:
    emb = blob_embedding_set(count_per_class=10)
    prepared = _FakePrepared(emb)
    write_tree(tmp_path / "m", projector_run(emb, prepared, "m", ProjectorParams(max_points=20, thumbnail=16)))
    tensors = np.loadtxt(tmp_path / "m" / "tensors.tsv", delimiter="\t")
    metadata = pd.read_csv(tmp_path / "m" / "metadata.tsv", sep="\t", dtype=str)
    assert (
        tensors.shape == (20, 5) and list(metadata.columns) == ["label", "class", "split", "id"] and len(metadata) == 20
    )
    rows = [int(np.flatnonzero(emb.ids == i)[0]) for i in metadata["id"]]
    np.testing.assert_allclose(tensors, emb.embeddings[rows], atol=1e-5)
    assert list(metadata["class"]) == [str(emb.class_names[emb.labels[r]]) for r in rows]
    sprite = Image.open(tmp_path / "m" / "sprite.png")
    assert sprite.size == (5 * 16, 5 * 16)  # ceil(sqrt(20)) = 5 thumbnails per side
    # Thumbnail i (row-major) is the image of point i.
    first = np.asarray(sprite.crop((16, 0, 32, 16)), np.float64)
    expected = np.asarray(Image.fromarray(prepared.images_by_id[metadata["id"][1]]).resize((16, 16), Image.BICUBIC))
    assert np.abs(first - expected).mean() < 1
    config = (tmp_path / "m" / "projector_config.pbtxt").read_text()
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    parsed = text_format.Parse(config, ProjectorConfig())
    (embedding,) = parsed.embeddings
    assert embedding.tensor_path == "tensors.tsv" and embedding.metadata_path == "metadata.tsv"
    assert embedding.sprite.image_path == "sprite.png" and list(embedding.sprite.single_image_dim) == [16, 16]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_tensorboard_serves_the_projector_logdir(tmp_path: Path) -> None:
    emb = blob_embedding_set(count_per_class=10)
    files = projector_run(emb, _FakePrepared(emb), "m", ProjectorParams(max_points=20, thumbnail=16))
    write_tree(tmp_path / "m", files)
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(tmp_path),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/data/plugin/projector"
    try:
        runs, deadline = [], time.monotonic() + 90
        while not runs and time.monotonic() < deadline:  # TensorBoard lists runs after its first logdir scan
            with contextlib.suppress(OSError):
                runs = json.loads(urllib.request.urlopen(f"{base}/runs", timeout=5).read())
            time.sleep(0.5)
        assert runs == ["m"]
        config = json.loads(urllib.request.urlopen(f"{base}/info?run=m", timeout=10).read())
        assert [int(n) for n in config["embeddings"][0]["tensorShape"]] == [20, 5]
        tensor = urllib.request.urlopen(f"{base}/tensor?run=m&name=m", timeout=10).read()
        assert len(tensor) == 20 * 5 * 4  # float32, served as raw bytes
        sprite = urllib.request.urlopen(f"{base}/sprite_image?run=m&name=m", timeout=10).read()
        assert sprite[:8] == b"\x89PNG\r\n\x1a\n"
        metadata = urllib.request.urlopen(f"{base}/metadata?run=m&name=m", timeout=10).read().decode()
        assert metadata.splitlines()[0] == "label\tclass\tsplit\tid" and len(metadata.splitlines()) == 21
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_more_clusters_than_test_images_is_one_line_before_any_work() -> None:
    with pytest.raises(UserError, match=r"^cluster\.k: 11 clusters for 10 test images; use at most 10$"):
        cluster_model(blob_embedding_set(), ClusterParams(k=11))
