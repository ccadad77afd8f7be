"""The stacking ensemble: every method, validation-only fitting, persistence and the stage's outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedlab.core.errors import UserError
from embedlab.core.layout import Layout
from embedlab.core.params import StackParams
from embedlab.embed.embeddings import EmbeddingSet, l2_normalize, load_sets
from embedlab.stack.fit import fit_stacker, stack_embeddings, stack_metrics
from embedlab.stack.stacker import Stacker

CLASSES = 4


def _sets(seed: int = 0, per_split: tuple[int, int, int] = (60, 40, 40)) -> dict[str, EmbeddingSet]:
    """Two 'backbones' over the same images: class signal plus noise, in different dimensions."""
    rng = np.random.default_rng(seed)
    splits = np.repeat(["train", "val", "test"], per_split)
    labels = np.arange(len(splits)) % CLASSES
    ids = np.array([f"img{i:04d}" for i in range(len(splits))])
    names = np.array([f"c{i}" for i in range(CLASSES)])
    sets = {}
    for name, dim in (("a", 6), ("b", 10)):
        centres = rng.normal(size=(CLASSES, dim))
        vectors = l2_normalize(centres[labels] + 0.8 * rng.normal(size=(len(labels), dim)))
        sets[name] = EmbeddingSet(vectors, ids, labels, splits, names)
    return sets


def _poison_train(sets: dict[str, EmbeddingSet]) -> dict[str, EmbeddingSet]:
    out = {}
    for name, emb in sets.items():
        vectors = emb.embeddings.copy()
        vectors[emb.split("train")] = np.random.default_rng(99).normal(size=(len(emb.split("train")), vectors.shape[1]))
        out[name] = EmbeddingSet(vectors, emb.ids, emb.labels, emb.splits, emb.class_names)
    return out


@pytest.mark.parametrize("method", ["select", "concat", "pca", "weighted", "mlp"])
def test_every_method_gives_unit_embeddings_and_never_reads_train(method: str, tmp_path: Path) -> None:
    params = StackParams(method=method, dim=8, hidden=16, epochs=5, batch_size=32)
    sets = _sets()
    stacked, stacker, metrics = stack_embeddings(sets, params)
    assert stacked.embeddings.shape[0] == 140 and metrics["fit_rows"] == 40
    np.testing.assert_allclose(np.linalg.norm(stacked.embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(stacked.ids, sets["a"].ids)
    # Replacing every train-split embedding by noise changes nothing the stacker learned.
    _, poisoned_stacker, _ = stack_embeddings(_poison_train(sets), params)
    assert stacker.arrays.keys() == poisoned_stacker.arrays.keys()
    for key, value in stacker.arrays.items():
        np.testing.assert_allclose(poisoned_stacker.arrays[key], value, atol=1e-6)
    # The saved stacker applies to new embeddings exactly as the fitted one.
    stacker.save(tmp_path / "stack.npz")
    loaded = Stacker.load(tmp_path / "stack.npz")
    assert loaded.method == method and loaded.backbones == ["a", "b"]
    blocks = [sets["a"].embeddings[:7], sets["b"].embeddings[:7]]
    np.testing.assert_allclose(loaded.transform(blocks), stacked.embeddings[:7], atol=1e-5)


def test_fit_refuses_anything_but_validation_rows() -> None:
    sets = _sets()
    emb = sets["a"]
    with pytest.raises(AssertionError, match="validation"):
        fit_stacker(
            ["a"], [emb.embeddings], labels=emb.labels, splits=emb.splits, params=StackParams(method="pca"),
            num_classes=CLASSES,
        )  # fmt: skip


def test_concat_is_the_mean_of_cosines_and_weighted_learns_the_informative_backbone() -> None:
    sets = _sets()
    stacked, _, _ = stack_embeddings(sets, StackParams(method="concat"))
    a, b = sets["a"].embeddings, sets["b"].embeddings
    np.testing.assert_allclose(
        stacked.embeddings[:5] @ stacked.embeddings[5:10].T, (a[:5] @ a[5:10].T + b[:5] @ b[5:10].T) / 2, atol=1e-5
    )
    noise = EmbeddingSet(
        l2_normalize(np.random.default_rng(7).normal(size=b.shape)), *(getattr(sets["b"], f) for f in _META)
    )
    _, _, metrics = stack_embeddings({"a": sets["a"], "noise": noise}, StackParams(method="weighted", epochs=40))
    assert metrics["weight_a"] > metrics["weight_noise"]


_META = ("ids", "labels", "splits", "class_names")


def test_pca_whitening_is_capped_by_validation_size() -> None:
    _, stacker, metrics = stack_embeddings(_sets(), StackParams(method="pca", dim=1000))
    assert metrics["dim"] == 16 and stacker.arrays["projection"].shape == (16, 16)  # 6 + 10 input dims
    _, _, small = stack_embeddings(_sets(per_split=(20, 8, 8)), StackParams(method="pca", dim=1000))
    assert small["dim"] == 7  # 8 validation rows carry at most 7 directions


def test_stack_metrics_and_missing_inputs(tmp_path: Path) -> None:
    for name, emb in _sets().items():
        emb.save(tmp_path / "data" / "embeddings" / f"{name}.npz")
    sets = load_sets(["a", "b"], None, Layout(tmp_path))
    stacked, _, fit_report = stack_embeddings(sets, StackParams(method="pca", dim=4))
    metrics = stack_metrics(stacked, fit_report, seed=0)
    assert metrics["method"] == "pca" and metrics["dim"] == 4 and 0.5 < metrics["test_accuracy"] <= 1
    assert stacked.embeddings.shape == (140, 4)
    with pytest.raises(UserError, match=r"dvc repro embed@c"):
        load_sets(["a", "c"], None, Layout(tmp_path))


def test_misaligned_backbones_are_refused() -> None:
    sets = _sets()
    shuffled = sets["b"]
    sets["b"] = EmbeddingSet(shuffled.embeddings, shuffled.ids[::-1], *(getattr(shuffled, f) for f in _META[1:]))
    with pytest.raises(UserError, match="different images"):
        stack_embeddings(sets, StackParams())


def _noise_like(emb: EmbeddingSet, seed: int) -> EmbeddingSet:
    vectors = l2_normalize(np.random.default_rng(seed).normal(size=emb.embeddings.shape))
    return EmbeddingSet(vectors, *(getattr(emb, f) for f in _META))


def test_select_is_never_worse_than_its_best_member_on_validation_and_drops_noise() -> None:
    sets = _sets(per_split=(60, 120, 40))
    with_noise = {"a": sets["a"], "noise": _noise_like(sets["b"], 3), "b": sets["b"]}
    stacked, stacker, metrics = stack_embeddings(with_noise, StackParams(method="select", select_k=5))
    assert metrics["weight_noise"] == 0.0 and 0 < metrics["weight_a"] < metrics["weight_b"]  # unequal: √w matters
    assert metrics["val_map_stack"] > metrics["val_map_best_single"]
    np.testing.assert_allclose(stacker.arrays["weights"].sum(), 1.0, atol=1e-6)
    # The stack that is applied (and saved, and used by search and serve) scores what the fit reported.
    val = stacked.split("val")
    applied = stacked.embeddings[val]
    assert _loo_map(applied @ applied.T, stacked.labels[val]) == pytest.approx(metrics["val_map_stack"], abs=1e-6)
    # The reported scores are leave-one-out mAP@5 on the validation rows, recomputed here by hand.
    val = sets["a"].split("val")
    labels = sets["a"].labels[val]
    single = max(_loo_map(e.embeddings[val] @ e.embeddings[val].T, labels) for e in with_noise.values())
    assert metrics["val_map_best_single"] == pytest.approx(single, abs=1e-6)
    # Only noise and one real member: the stack is that member alone.
    _, _, alone = stack_embeddings({"a": sets["a"], "noise": with_noise["noise"]}, StackParams(method="select"))
    assert (alone["weight_a"], alone["weight_noise"]) == (1.0, 0.0)
    assert alone["val_map_stack"] == alone["val_map_best_single"]


def _loo_map(similarity: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out mAP@k, the slow obvious way."""
    scores = []
    for q in range(len(labels)):
        others = [i for i in np.argsort(-similarity[q], kind="stable") if i != q][:k]
        hits = [labels[i] == labels[q] for i in others]
        relevant = min(k, int((labels == labels[q]).sum()) - 1)
        precision = [sum(hits[: r + 1]) / (r + 1) for r in range(k)]
        scores.append(sum(p for p, h in zip(precision, hits, strict=True) if h) / relevant if relevant else 0.0)
    return float(np.mean(scores))


@pytest.mark.parametrize("method", ["select", "weighted", "pca"])
def test_only_contributing_backbones_change_the_stack(method: str) -> None:
    """Queries skip the backbones the stack weighs 0 (serve, search): passing zeros for them must change nothing."""
    rng = np.random.default_rng(0)
    blocks = [l2_normalize(rng.normal(size=(6, 4))) for _ in range(3)]
    if method == "pca":
        stacker = Stacker("pca", ["a", "b", "c"], {"mean": np.zeros(12, np.float32), "projection": np.eye(12, 5)})
    else:
        stacker = Stacker(method, ["a", "b", "c"], {"weights": np.array([0.7, 0.0, 0.3], np.float32)})
    assert stacker.contributing == (["a", "b", "c"] if method == "pca" else ["a", "c"])
    zeroed = [
        block if name in stacker.contributing else np.zeros_like(block)
        for name, block in zip("abc", blocks, strict=True)
    ]
    np.testing.assert_allclose(stacker.transform(zeroed), stacker.transform(blocks), atol=1e-6)
    if method == "pca":  # every block counts: zeroing one changes the result
        assert not np.allclose(
            stacker.transform([blocks[0], np.zeros_like(blocks[1]), blocks[2]]), stacker.transform(blocks)
        )


def _like(emb: EmbeddingSet, vectors: np.ndarray) -> EmbeddingSet:
    return EmbeddingSet(vectors, *(getattr(emb, f) for f in _META))


@pytest.mark.parametrize("method", ["select", "weighted", "concat", "pca"])
def test_a_collapsed_backbone_is_named_and_left_out(method: str, capsys) -> None:
    """A small photo folder in miniature: one backbone maps every image to almost the same vector. At any weight it
    would only add a near-constant to every similarity, so a weight given to it would describe nothing the stack
    does: the stack leaves it out, says so in one line, reports weight 0 for it, and is the stack of the others."""
    sets = _sets(per_split=(60, 120, 40))
    shape = (len(sets["a"].ids), 8)
    nearly_constant = l2_normalize(np.ones(shape) + 1e-3 * np.random.default_rng(5).normal(size=shape))  # cos > 0.9999
    with_flat = {"a": sets["a"], "flat": _like(sets["a"], nearly_constant), "b": sets["b"]}
    params = StackParams(method=method, select_k=5, dim=8, hidden=16, epochs=5, batch_size=32)
    stacked, stacker, report = stack_embeddings(with_flat, params)
    assert "stack: flat left out: its validation embeddings have collapsed" in capsys.readouterr().out
    assert stacker.backbones == ["a", "b"] and report["left_out"] == "flat"
    assert report.get("weight_flat", 0.0) == 0.0 and ("weight_flat" in report) == (method in ("select", "weighted"))
    without, _, _ = stack_embeddings(sets, params)
    np.testing.assert_allclose(stacked.embeddings, without.embeddings, atol=1e-6)


def test_select_reports_each_blocks_share_not_its_scale() -> None:
    """Squashing a block's similarities into a narrow band (cos -> (9 + cos) / 10) leaves what it ranks unchanged. The
    stack must then rank as before and report the same weights (each block's share of the stacked similarity's
    spread), while the scale it applies to that block grows to make up for the band."""
    sets = _sets(per_split=(60, 120, 40))
    a = sets["a"].embeddings
    squashed = l2_normalize(np.concatenate([np.full((len(a), 1), 3.0, np.float32), a], axis=1))
    _, plain_stacker, plain = stack_embeddings(sets, StackParams(method="select"))
    _, squashed_stacker, report = stack_embeddings(
        {"a": _like(sets["a"], squashed), "b": sets["b"]}, StackParams(method="select")
    )
    assert 0 < plain["weight_a"] < 1 and (report["weight_a"], report["weight_b"]) == (
        plain["weight_a"],
        plain["weight_b"],
    )
    assert report["val_map_stack"] == pytest.approx(plain["val_map_stack"], abs=1e-6)
    assert squashed_stacker.arrays["weights"][0] > 5 * plain_stacker.arrays["weights"][0]
