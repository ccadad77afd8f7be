"""A tiny real pipeline (`dvc repro` through evaluate with one small backbone), then the search command on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedlab.embeddings import EmbeddingSet

from .conftest import copy_repo, dvc, run, set_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("e2e") / "repo")
    set_params(
        repo,
        data__max_per_class=8,
        backbones={"mobilenetv2": {"epochs": 2}},
        model__embedding_dim=16,
        train__batch_size=32,
        evaluate__examples=3,
    )
    dvc("repro", "evaluate", cwd=repo)
    return repo


def test_embeddings_follow_the_contract(pipeline: Path) -> None:
    emb = EmbeddingSet.load(pipeline / "data" / "embeddings" / "mobilenetv2.npz")
    assert emb.embeddings.shape == (80, 16) and emb.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb.embeddings, axis=1), 1.0, atol=1e-5)
    assert set(emb.splits) == {"train", "val", "test"} and len(set(emb.ids)) == 80
    assert json.loads((pipeline / "metrics" / "train" / "mobilenetv2.json").read_text())["epochs_run"] == 2


def test_evaluate_outputs_and_noop_rerun(pipeline: Path) -> None:
    for model in ("mobilenetv2", "raw_pixels"):
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
        assert all(0 <= v <= 1 for v in metrics.values())
        assert (pipeline / "plots" / "retrieval" / "examples" / f"{model}_examples.png").stat().st_size > 1000
        confusion = json.loads((pipeline / "plots" / "retrieval" / "confusion" / f"{model}.json").read_text())
        assert len(confusion) == 20  # test queries: 2 per class
    shown = dvc("metrics", "show", cwd=pipeline).stdout
    assert "metrics/retrieval/mobilenetv2.json" in shown and "metrics/retrieval/raw_pixels.json" in shown
    again = dvc("repro", "evaluate", cwd=pipeline)
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
    other = _embedlab(pipeline, "search", str(query), "--model", "resnet50")
    assert other.returncode != 0 and "dvc repro embed@resnet50" in other.stderr
