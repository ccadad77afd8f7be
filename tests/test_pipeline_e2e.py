"""A tiny real pipeline (the whole `dvc repro` with one small backbone), then the commands and the report on it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from embedlab.embeddings import EmbeddingSet

from .conftest import dvc, run

pytestmark = pytest.mark.slow


def test_embeddings_follow_the_contract(pipeline: Path) -> None:
    emb = EmbeddingSet.load(pipeline / "data" / "embeddings" / "mobilenetv2.npz")
    assert emb.embeddings.shape == (80, 16) and emb.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb.embeddings, axis=1), 1.0, atol=1e-5)
    assert set(emb.splits) == {"train", "val", "test"} and len(set(emb.ids)) == 80
    assert json.loads((pipeline / "metrics" / "train" / "mobilenetv2.json").read_text())["epochs_run"] == 2


def test_evaluate_outputs_and_noop_rerun(pipeline: Path) -> None:
    for model in ("mobilenetv2", "stack", "raw_pixels"):
        metrics = json.loads((pipeline / "metrics" / "retrieval" / f"{model}.json").read_text())
        assert {
            "map@5",
            "precision@1",
            "precision@5",
            "hit_rate@5",
            "map@r",
            "r_precision",
            "knn_accuracy@5",
            "linear_probe_accuracy",
        } <= set(metrics)
        counts = {key: metrics.pop(key) for key in ("queries", "gallery")}
        assert counts == {"queries": 20, "gallery": 50}, counts  # every test image, the whole train split
        assert all(0 <= v <= 1 for v in metrics.values())
        assert (pipeline / "plots" / "retrieval" / "examples" / f"{model}_examples.png").stat().st_size > 1000
        confusion = json.loads((pipeline / "plots" / "retrieval" / "confusion" / f"{model}.json").read_text())
        assert len(confusion) == 20  # test queries: 2 per class
    shown = dvc("metrics", "show", cwd=pipeline).stdout
    assert "metrics/retrieval/mobilenetv2.json" in shown and "metrics/retrieval/raw_pixels.json" in shown
    stack = json.loads((pipeline / "metrics" / "stack.json").read_text())
    assert stack["method"] == "pca" and stack["fit_rows"] == 10 and stack["dim"] == 8  # 1 val image per class
    for model in ("mobilenetv2", "stack", "raw_pixels"):
        cluster = json.loads((pipeline / "metrics" / "cluster" / f"{model}.json").read_text())
        assert set(cluster) == {"nmi", "ari", "purity", "silhouette"}
        assert len(json.loads((pipeline / "plots" / "cluster" / "tsne" / f"{model}.json").read_text())) == 20
    assert sorted(p.name for p in (pipeline / "projector").iterdir()) == ["mobilenetv2", "stack"]
    again = dvc("repro", cwd=pipeline)
    assert "Running stage" not in again.stdout


def _embedlab(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "embedlab.cli", *args], cwd=repo, check=False)


def test_search_text_json_and_collage(pipeline: Path, tmp_path: Path) -> None:
    query = tmp_path / "query.png"
    Image.fromarray(np.full((50, 70, 4), 200, np.uint8), "RGBA").save(query)  # any size and mode
    text = _embedlab(pipeline, "search", str(query), "--model", "mobilenetv2", "--k", "3", "--out", "c.png")
    assert text.returncode == 0, text.stderr
    lines = [line for line in text.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(lines) == 3 and lines[0].split()[0] == "1"
    assert (pipeline / "c.png").stat().st_size > 1000
    as_json = _embedlab(pipeline, "search", str(query), str(query), "--model", "mobilenetv2", "--json")
    results = json.loads(as_json.stdout)
    assert len(results) == 2 and len(results[0]["results"]) == 5
    scores = [hit["score"] for hit in results[0]["results"]]
    assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)
    assert results[0]["results"][0]["id"].startswith("digits/")


def test_search_with_the_stack_runs_base_models_then_stacker(pipeline: Path, tmp_path: Path) -> None:
    from embedlab.data.prepare import Prepared

    prepared = Prepared.open(pipeline / "data" / "prepared")
    test_row = int(prepared.split("test")[0])
    query = tmp_path / "digit.png"
    Image.fromarray(np.asarray(prepared.images[test_row])).save(query)
    found = _embedlab(pipeline, "search", str(query), "--model", "stack", "--k", "50", "--json")
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)[0]["results"]
    # The query is a dataset image: through base model + stacker it must land on its own stored embedding.
    assert hits[0]["id"] == prepared.index["id"][test_row] and hits[0]["score"] > 0.999


def test_export_command(pipeline: Path, tmp_path: Path) -> None:
    out = tmp_path / "stack.parquet"
    done = _embedlab(pipeline, "export", "--model", "stack", "--format", "parquet", "--out", str(out))
    assert done.returncode == 0, done.stderr
    import pandas as pd

    frame = pd.read_parquet(out)
    emb = EmbeddingSet.load(pipeline / "data" / "stack" / "stack.npz")
    np.testing.assert_array_equal(frame[[f"e{i}" for i in range(8)]].to_numpy(np.float32), emb.embeddings)


def test_search_errors(pipeline: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not really a jpeg")
    bad = _embedlab(pipeline, "search", str(broken), "--model", "mobilenetv2")
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].startswith(f"error: {broken} is not a readable image")
    missing = _embedlab(pipeline, "search", str(tmp_path / "nope.png"), "--model", "mobilenetv2")
    assert missing.returncode != 0 and "cannot read" in missing.stderr
    query = tmp_path / "q.png"
    Image.new("L", (9, 9)).save(query)
    unknown = _embedlab(pipeline, "search", str(query), "--model", "alexnet")
    assert unknown.returncode != 0
    assert (
        unknown.stderr.strip() == "error: --model alexnet: not a model of this pipeline; choose from mobilenetv2, stack"
    )
    # A listed backbone whose embeddings were never made names the stage that makes them.
    other_root = tmp_path / "other"
    shutil.copytree(pipeline / "data" / "prepared", other_root / "data" / "prepared")
    params = yaml.safe_load((pipeline / "params.yaml").read_text())
    params["backbones"]["resnet50"] = None
    (other_root / "params.yaml").write_text(yaml.safe_dump(params))
    other = _embedlab(other_root, "search", str(query), "--model", "resnet50")
    assert other.returncode != 0 and "dvc repro embed@resnet50" in other.stderr
