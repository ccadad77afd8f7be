"""embedlab export: every format round-trips, bad requests are one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embedlab.cli.export import export_embeddings
from embedlab.core.errors import UserError
from embedlab.core.layout import Layout
from embedlab.embed.embeddings import EmbeddingSet, l2_normalize


def _blobs(per_class: int = 30, classes: int = 4, spread: float = 0.01, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    centres = np.eye(8)[:classes] * 5
    return l2_normalize(centres[labels] + spread * rng.normal(size=(len(labels), 8))), labels


def _embedding_set(count_per_class: int = 10, classes: int = 3, dim: int = 5) -> EmbeddingSet:
    vectors, labels = _blobs(per_class=count_per_class, classes=classes, spread=0.2)
    vectors = vectors[:, :dim] if dim <= 8 else vectors
    splits = np.array(["train", "val", "test"] * (len(labels) // 3 + 1))[: len(labels)]
    ids = np.array([f"img/{i:03d}.png" for i in range(len(labels))])
    return EmbeddingSet(l2_normalize(vectors), ids, labels, splits, np.array(["cat", "dog", "eel"][:classes]))


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
def test_export_round_trip(fmt: str, tmp_path: Path) -> None:
    emb = _embedding_set(count_per_class=7)
    emb.save(tmp_path / "data" / "embeddings" / "m.npz")
    out = export_embeddings(
        "m", fmt, tmp_path / f"out.{fmt}", layout=Layout(tmp_path), rows_per_block=4
    )  # several blocks
    if fmt == "parquet":
        frame = pd.read_parquet(out)
    else:
        frame = pd.read_csv(out, sep="\t" if fmt == "tsv" else ",", dtype={"id": str, "class": str, "split": str})
    assert list(frame.columns[:4]) == ["id", "label", "class", "split"] and len(frame) == 21
    np.testing.assert_array_equal(frame[[f"e{i}" for i in range(5)]].to_numpy(np.float32), emb.embeddings)
    assert list(frame["id"]) == list(emb.ids) and list(frame["split"]) == list(emb.splits)
    assert list(frame["class"]) == [str(emb.class_names[label]) for label in emb.labels]


def test_export_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"dvc repro embed@nope"):
        export_embeddings("nope", "csv", layout=Layout(tmp_path))
    with pytest.raises(UserError, match="dvc repro stack"):
        export_embeddings("stack", "csv", layout=Layout(tmp_path))
    with pytest.raises(UserError, match="unknown format"):
        export_embeddings("m", "xlsx", layout=Layout(tmp_path))
