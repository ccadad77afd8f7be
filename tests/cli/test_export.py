"""embedlab export: every format round-trips, bad requests are one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embedlab.cli.export import export_embeddings
from embedlab.core.errors import UserError
from embedlab.core.layout import Layout

from ..conftest import blob_embedding_set


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
def test_export_round_trip(fmt: str, tmp_path: Path) -> None:
    emb = blob_embedding_set(count_per_class=7)
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
