"""Queries of ``embedlab search`` and ``serve`` are embedded exactly as the embed stage embedded the gallery."""

from pathlib import Path

import numpy as np
import pytest

from embedlab.augment.test_time import TestTimeViews
from embedlab.core.layout import Layout
from embedlab.core.params import ModelParams
from embedlab.embed.embeddings import embed_images


@pytest.mark.parametrize(("flip", "translate"), [(False, False), (True, False), (True, True), (False, True)])
def test_a_query_is_embedded_from_the_same_views_as_the_gallery(tmp_path: Path, flip: bool, translate: bool) -> None:
    from embedlab.models.backbones import build_models
    from embedlab.models.io import load_embedding_model, save_embedding_model
    from embedlab.serve.query import QueryEmbedder

    layout = Layout(tmp_path)
    layout.model("smallnet").parent.mkdir(parents=True)
    save_embedding_model(build_models("smallnet", 16, 3, ModelParams(embedding_dim=8), seed=0).embedding,
                         layout.model("smallnet"))  # fmt: skip
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    views = TestTimeViews.of(flip=flip, translate=translate)
    served = QueryEmbedder(layout, ["smallnet"], views).embed(images, ["smallnet"])["smallnet"]
    stored = embed_images(load_embedding_model(layout.model("smallnet")), images, progress=False, views=views)
    np.testing.assert_allclose(served, stored, atol=1e-5)


@pytest.mark.parametrize("translate", [False, True])
def test_a_query_pass_keeps_to_the_pixel_budget_with_all_its_views(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, translate: bool
) -> None:
    """Long query lists go through in chunks whose views together stay within the forward pixel budget (here
    16 images of 16 px), and chunking changes no embedding."""
    from embedlab.core import runtime
    from embedlab.models.backbones import build_models
    from embedlab.models.io import save_embedding_model
    from embedlab.serve.query import QueryEmbedder

    monkeypatch.setattr(runtime, "FORWARD_BATCH_PIXELS", 16 * 16 * 16)
    layout = Layout(tmp_path)
    layout.model("smallnet").parent.mkdir(parents=True)
    save_embedding_model(build_models("smallnet", 16, 3, ModelParams(embedding_dim=8), seed=0).embedding,
                         layout.model("smallnet"))  # fmt: skip
    images = np.random.default_rng(0).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    embedder = QueryEmbedder(layout, ["smallnet"], TestTimeViews.of(flip=True, translate=translate))
    passes: list[int] = []
    forward = embedder.forward["smallnet"]
    embedder.forward["smallnet"] = lambda batch: passes.append(len(batch)) or forward(batch)
    chunked = embedder.embed(images, ["smallnet"])["smallnet"]
    assert len(passes) > 1 and max(passes) <= 16, passes
    one_by_one = np.concatenate([embedder.embed(images[i : i + 1], ["smallnet"])["smallnet"] for i in (0, 19)])
    np.testing.assert_allclose(chunked[[0, 19]], one_by_one, atol=1e-5)


@pytest.mark.parametrize("index", ["exact", "faiss"])
def test_a_gallery_ranks_with_the_query_expansion_it_is_given(tmp_path: Path, index: str) -> None:
    """`search` and `serve` rank like evaluate: a query of class 0 whose nearest image is a stray of class 1 finds
    the stray first unexpanded, and only its own class expanded with its 5 nearest."""
    from embedlab.core.params import FaissParams
    from embedlab.embed.embeddings import EmbeddingSet, l2_normalize
    from embedlab.serve.query import Gallery

    own = l2_normalize(np.array([[1.0, 0.30 + 0.02 * i, 0.0] for i in range(5)]))
    stray, far = l2_normalize(np.array([[1.0, 0.0, 0.05]])), l2_normalize(np.array([[0.0, 0.2, 1.0]] * 3))
    labels = np.array([1, 0, 0, 0, 0, 0, 1, 1, 1])
    ids = np.array([f"img{i}" for i in range(9)])
    layout = Layout(tmp_path)
    layout.embeddings("smallnet").parent.mkdir(parents=True)
    vectors = np.concatenate([stray, own, far])
    EmbeddingSet(vectors, ids, labels, np.array(["train"] * 9), np.array(["a", "b"])).save(
        layout.embeddings("smallnet")
    )
    query = l2_normalize(np.array([[1.0, 0.01, 0.0]]))
    flat = FaissParams(type="flat")
    found = {
        n: [hit.label for hit in Gallery("smallnet", layout, "all", "cosine", index, flat, n).top_k(query, 5)[0]]
        for n in (0, 5)
    }
    assert found == {0: [1, 0, 0, 0, 0], 5: [0, 0, 0, 0, 0]}
