"""A tiny real pipeline (the whole `dvc repro` with two small backbones and the default stack), then the commands and
the report on it."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from embedlab.embed.embeddings import EmbeddingSet

from ..conftest import dvc, run

pytestmark = pytest.mark.slow


def test_embeddings_follow_the_contract(pipeline: Path) -> None:
    emb = EmbeddingSet.load(pipeline / "data" / "embeddings" / "mobilenetv2.npz")
    assert emb.embeddings.shape == (80, 16) and emb.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb.embeddings, axis=1), 1.0, atol=1e-5)
    assert set(emb.splits) == {"train", "val", "test"} and len(set(emb.ids)) == 80
    assert json.loads((pipeline / "reports" / "train" / "mobilenetv2.json").read_text())["epochs_run"] == 2


MODELS = ("mobilenetv2", "smallnet", "stack", "raw_pixels")


def test_evaluate_outputs_and_noop_rerun(pipeline: Path) -> None:
    for model in ("mobilenetv2", "stack", "raw_pixels"):
        headline = json.loads((pipeline / "metrics" / "retrieval" / f"{model}.json").read_text())
        metrics = json.loads((pipeline / "reports" / "retrieval" / f"{model}.json").read_text())
        numbers = {"map@5", "map@r", "precision@1"} | ({"map@5_gain"} if model == "stack" else set())
        assert set(headline) == numbers | {"health", "protocol"}
        assert headline["health"] in ("ok", "below raw pixels") and headline["health"] == metrics.pop("health")
        # how the figures were measured, beside them: 20 test queries against the 40-image train split
        assert headline.pop("protocol") == "20 test vs 40 train, exact cosine"
        protocol = {key: metrics.pop(key) for key in ("gallery_splits", "index", "metric", "query_expansion")}
        assert protocol == {"gallery_splits": "train", "index": "exact", "metric": "cosine", "query_expansion": 0}
        assert {key: headline[key] for key in numbers}.items() <= metrics.items()
        assert metrics.pop("cosine_sd") > 0.01 and -1 <= metrics.pop("cosine_mean") <= 1  # none collapsed
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
        assert counts == {"queries": 20, "gallery": 40}, counts  # every test image, the whole train split
        gain = metrics.pop("map@5_gain", 0.0)  # the stack's mAP@5 minus its best member's
        assert all(0 <= v <= 1 for v in metrics.values()) and -1 <= gain <= 1
        assert (pipeline / "plots" / "retrieval" / "examples" / f"{model}_examples.png").stat().st_size > 1000
        confusion = json.loads((pipeline / "plots" / "retrieval" / "confusion" / f"{model}.json").read_text())
        assert len(confusion) == 20  # test queries: 2 per class
    retrieval = {m: json.loads((pipeline / "metrics" / "retrieval" / f"{m}.json").read_text()) for m in MODELS}
    best_member = max(retrieval[m]["map@5"] for m in ("mobilenetv2", "smallnet"))
    assert retrieval["stack"]["map@5_gain"] == pytest.approx(retrieval["stack"]["map@5"] - best_member, abs=2e-6)
    shown = dvc("metrics", "show", cwd=pipeline).stdout
    assert "metrics/retrieval/mobilenetv2.json" in shown and "metrics/retrieval/raw_pixels.json" in shown
    stack = json.loads((pipeline / "reports" / "stack.json").read_text())
    assert stack["method"] == "select" and stack["fit_rows"] == 20 and stack["dim"] == 32  # 2 val images per class
    for model in ("mobilenetv2", "stack", "raw_pixels"):
        cluster = json.loads((pipeline / "reports" / "cluster" / f"{model}.json").read_text())
        assert set(cluster) == {"nmi", "ari", "purity", "silhouette"}
        assert json.loads((pipeline / "metrics" / "cluster" / f"{model}.json").read_text()) == {"nmi": cluster["nmi"]}
        assert len(json.loads((pipeline / "plots" / "cluster" / "tsne" / f"{model}.json").read_text())) == 20
    assert sorted(p.name for p in (pipeline / "projector").iterdir()) == ["mobilenetv2", "smallnet", "stack"]
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


def _search_stack(root: Path, pixels: np.ndarray, tmp_path: Path, *, k: int) -> list[dict]:
    """`embedlab search --model stack` in ``root`` with these pixels as a PNG; the hits."""
    query = tmp_path / "digit.png"
    Image.fromarray(np.asarray(pixels)).save(query)
    found = _embedlab(root, "search", str(query), "--model", "stack", "--k", str(k), "--json")
    assert found.returncode == 0, found.stderr
    return json.loads(found.stdout)[0]["results"]


def test_search_with_the_stack_runs_base_models_then_stacker(pipeline: Path, tmp_path: Path) -> None:
    from embedlab.data.prepared import Prepared

    prepared = Prepared.open(pipeline / "data" / "prepared")
    test_row = int(prepared.split("test")[0])
    hits = _search_stack(pipeline, prepared.images[test_row], tmp_path, k=50)
    # The query is a dataset image: through base model + stacker it must land on its own stored embedding.
    assert hits[0]["id"] == prepared.index["id"][test_row] and hits[0]["score"] > 0.999


def _loo_map(vectors: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Leave-one-out mAP@k among ``vectors``, the slow obvious way (AP@k divides by min(k, R))."""
    similarity, scores = vectors @ vectors.T, []
    for q in range(len(labels)):
        ranked = [i for i in np.argsort(-similarity[q], kind="stable") if i != q][:k]
        hits = [labels[i] == labels[q] for i in ranked]
        relevant = min(k, int((labels == labels[q]).sum()) - 1)
        found = sum(sum(hits[: r + 1]) / (r + 1) for r, hit in enumerate(hits) if hit)
        scores.append(found / relevant if relevant else 0.0)
    return float(np.mean(scores))


def test_the_default_stack_applies_what_it_reports(pipeline: Path) -> None:
    """``select`` reports the validation mAP of the weights it chose; the stack the pipeline applied and saved (what
    evaluate, search and serve use) scores exactly that on the validation images, and never below its best member."""
    from embedlab.core.params import load_params
    from embedlab.retrieval.spread import cosine_spread
    from embedlab.stack.stacker import Stacker

    report = json.loads((pipeline / "reports" / "stack.json").read_text())
    stack_params = load_params(pipeline / "params.yaml").stack
    k = stack_params.select_k
    stacked = EmbeddingSet.load(pipeline / "data" / "stack" / "stack.npz")
    val = stacked.split("val")
    assert _loo_map(stacked.embeddings[val], stacked.labels[val], k) == pytest.approx(report["val_map_stack"], abs=1e-6)
    members = [
        EmbeddingSet.load(pipeline / "data" / "embeddings" / f"{name}.npz") for name in ("mobilenetv2", "smallnet")
    ]
    singles = [_loo_map(m.embeddings[val], m.labels[val], k) for m in members]
    assert report["val_map_best_single"] == pytest.approx(max(singles), abs=1e-6)
    assert report["val_map_stack"] >= report["val_map_best_single"]
    stacker = Stacker.load(pipeline / "models" / "stack.npz")
    assert stacker.backbones == ["mobilenetv2", "smallnet"]
    # A reported weight is the block's share of the stacked similarities' spread: its scale times that spread.
    spreads = [cosine_spread(m.embeddings[val], seed=stack_params.seed).sd for m in members]
    shares = stacker.arrays["weights"] * spreads / (stacker.arrays["weights"] * spreads).sum()
    np.testing.assert_allclose(shares, [report["weight_mobilenetv2"], report["weight_smallnet"]], atol=1e-5)


def test_a_query_skips_a_backbone_the_stack_weighs_zero(pipeline: Path, tmp_path: Path) -> None:
    """With smallnet at weight 0 the stack of a query is its mobilenetv2 embedding alone, and search ranks the
    stacked gallery by it."""
    from embedlab.data.prepared import Prepared
    from embedlab.stack.stacker import Stacker

    root = tmp_path / "root"
    (root / "models").mkdir(parents=True)
    for name in ("data", "params.yaml"):
        (root / name).symlink_to(pipeline / name)
    for model in (pipeline / "models").glob("*.keras"):
        (root / "models" / model.name).symlink_to(model)
    Stacker("select", ["mobilenetv2", "smallnet"], {"weights": np.array([1.0, 0.0], np.float32)}).save(
        root / "models" / "stack.npz"
    )
    prepared = Prepared.open(pipeline / "data" / "prepared")
    row = int(prepared.split("test")[1])
    hits = _search_stack(root, prepared.images[row], tmp_path, k=5)
    mobilenet = EmbeddingSet.load(pipeline / "data" / "embeddings" / "mobilenetv2.npz").embeddings[row]
    gallery = EmbeddingSet.load(pipeline / "data" / "stack" / "stack.npz")
    scores = gallery.embeddings @ np.concatenate([mobilenet, np.zeros(16, np.float32)])
    expected = np.argsort(-scores, kind="stable")[:5]
    assert [h["id"] for h in hits] == list(gallery.ids[expected])
    np.testing.assert_allclose([h["score"] for h in hits], scores[expected], atol=1e-4)


def test_every_output_has_the_mode_the_umask_gives(pipeline: Path) -> None:
    """Outputs are made with the user's umask (the atomic writers' temporary files would be private: 0600/0700),
    so a teammate sharing the checkout can read them."""
    mask = os.umask(0)
    os.umask(mask)
    wrong = []
    for top in ("data", "models", "metrics", "reports", "plots", "dvclive", "projector"):
        for path in [pipeline / top, *(pipeline / top).rglob("*")]:
            if path.is_symlink() or ".dvc" in path.parts:
                continue
            expected = (0o777 if path.is_dir() else 0o666) & ~mask
            if stat.S_IMODE(path.stat().st_mode) != expected:
                wrong.append(f"{path.relative_to(pipeline)}: {oct(stat.S_IMODE(path.stat().st_mode))}")
    assert not wrong, wrong


def test_export_command(pipeline: Path, tmp_path: Path) -> None:
    out = tmp_path / "stack.parquet"
    done = _embedlab(pipeline, "export", "--model", "stack", "--format", "parquet", "--out", str(out))
    assert done.returncode == 0, done.stderr
    import pandas as pd

    frame = pd.read_parquet(out)
    emb = EmbeddingSet.load(pipeline / "data" / "stack" / "stack.npz")
    np.testing.assert_array_equal(
        frame[[f"e{i}" for i in range(emb.embeddings.shape[1])]].to_numpy(np.float32), emb.embeddings
    )


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
        unknown.stderr.strip()
        == "error: --model alexnet: not a model of this pipeline; choose from mobilenetv2, smallnet, stack"
    )
    # A listed backbone whose embeddings were never made names the stage that makes them.
    other_root = tmp_path / "other"
    shutil.copytree(pipeline / "data" / "prepared", other_root / "data" / "prepared")
    params = yaml.safe_load((pipeline / "params.yaml").read_text())
    params["backbones"]["resnet50"] = None
    (other_root / "params.yaml").write_text(yaml.safe_dump(params))
    other = _embedlab(other_root, "search", str(query), "--model", "resnet50")
    assert other.returncode != 0 and "dvc repro embed@resnet50" in other.stderr
