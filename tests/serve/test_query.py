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
