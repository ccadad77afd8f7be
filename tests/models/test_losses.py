"""The Keras triplet and supervised contrastive losses against plain NumPy references written from the definitions."""

from __future__ import annotations

import numpy as np
import pytest

from embedlab.embed.embeddings import l2_normalize
from embedlab.models.losses import (
    SupervisedContrastiveLoss,
    TripletLoss,
    batch_hard_triplet_loss,
    semi_hard_triplet_loss,
    supervised_contrastive_loss,
)


def reference_batch_hard(labels: np.ndarray, emb: np.ndarray, margin: float) -> float:
    dist = 1.0 - emb @ emb.T
    losses = []
    for a in range(len(labels)):
        pos = [dist[a, p] for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        neg = [dist[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
        if pos and neg:
            losses.append(max(max(pos) - min(neg) + margin, 0.0))
    return float(np.mean(losses)) if losses else 0.0


def reference_semi_hard(labels: np.ndarray, emb: np.ndarray, margin: float) -> float:
    dist = 1.0 - emb @ emb.T
    losses = []
    for a in range(len(labels)):
        negatives = [dist[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
        if not negatives:
            continue
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a]:
                continue
            farther = [d for d in negatives if d > dist[a, p]]
            chosen = min(farther) if farther else max(negatives)
            losses.append(max(dist[a, p] - chosen + margin, 0.0))
    return float(np.mean(losses)) if losses else 0.0


def reference_supervised_contrastive(labels: np.ndarray, emb: np.ndarray, temperature: float) -> float:
    sim = emb.astype(np.float64) @ emb.T.astype(np.float64) / temperature
    losses = []
    for a in range(len(labels)):
        others = [j for j in range(len(labels)) if j != a]
        positives = [p for p in others if labels[p] == labels[a]]
        if positives:
            log_denominator = np.log(sum(np.exp(sim[a, j]) for j in others))
            losses.append(-np.mean([sim[a, p] - log_denominator for p in positives]))
    return float(np.mean(losses)) if losses else 0.0


HAND_MADE = {
    # two tight, well separated classes: both losses are zero with a small margin
    "separated": (np.array([0, 0, 1, 1]), np.array([[1, 0], [0.99, 0.14], [-1, 0], [-0.99, 0.14]])),
    # an impostor: a class-1 point sits right next to class 0
    "impostor": (np.array([0, 0, 1, 1, 2]), np.array([[1, 0], [0, 1], [0.98, 0.2], [-1, 0], [0.7, 0.7]])),
    # a singleton class (no positive for that anchor) and a batch with one class only in part
    "singleton": (np.array([0, 0, 0, 1]), np.array([[1, 0.1], [0.8, 0.6], [0.3, 1], [0.9, -0.4]])),
}


@pytest.mark.parametrize("case", HAND_MADE)
@pytest.mark.parametrize("margin", [0.05, 0.2, 1.0])
def test_hand_made_batches(case: str, margin: float) -> None:
    labels, points = HAND_MADE[case]
    emb = l2_normalize(points.astype(np.float32))
    hard = float(batch_hard_triplet_loss(labels, emb, margin))
    semi = float(semi_hard_triplet_loss(labels, emb, margin))
    assert hard == pytest.approx(reference_batch_hard(labels, emb, margin), abs=1e-5)
    assert semi == pytest.approx(reference_semi_hard(labels, emb, margin), abs=1e-5)
    supcon = float(supervised_contrastive_loss(labels, emb, margin))  # the margins double as temperatures
    assert supcon == pytest.approx(reference_supervised_contrastive(labels, emb, margin), rel=1e-4, abs=1e-5)


def test_random_batches_match_reference() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels = rng.integers(0, 4, size=24)
        emb = l2_normalize(rng.normal(size=(24, 8)).astype(np.float32))
        assert float(batch_hard_triplet_loss(labels, emb, 0.3)) == pytest.approx(
            reference_batch_hard(labels, emb, 0.3), abs=1e-5
        )
        assert float(semi_hard_triplet_loss(labels, emb, 0.3)) == pytest.approx(
            reference_semi_hard(labels, emb, 0.3), abs=1e-5
        )
        assert float(supervised_contrastive_loss(labels, emb, 0.1)) == pytest.approx(
            reference_supervised_contrastive(labels, emb, 0.1), rel=1e-4, abs=1e-5
        )


def test_separated_is_zero_and_impostor_is_not() -> None:
    labels, points = HAND_MADE["separated"]
    assert float(batch_hard_triplet_loss(labels, l2_normalize(points.astype(np.float32)), 0.05)) == 0.0
    labels, points = HAND_MADE["impostor"]
    assert float(batch_hard_triplet_loss(labels, l2_normalize(points.astype(np.float32)), 0.05)) > 0.1


def test_keras_loss_object_and_gradient() -> None:
    import tensorflow as tf

    labels = np.array([0, 0, 1, 1, 2, 2])
    emb = tf.Variable(l2_normalize(np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)))
    loss = TripletLoss("semi_hard", 0.5)
    with tf.GradientTape() as tape:
        value = loss(labels, emb)
    assert float(value) == pytest.approx(reference_semi_hard(labels, emb.numpy(), 0.5), abs=1e-5)
    assert np.isfinite(tape.gradient(value, emb).numpy()).all()
    assert TripletLoss.from_config(loss.get_config()).mining == "semi_hard"


def test_supervised_contrastive_pulls_positives_together() -> None:
    """The loss falls as a class tightens and rises with an impostor; its gradient moves an anchor towards its
    positive; the Keras loss object serialises its temperature."""
    import tensorflow as tf

    labels, points = HAND_MADE["impostor"]
    emb = l2_normalize(points.astype(np.float32))
    tight = emb.copy()
    tight[1] = tight[0]  # class 0's two points made one
    assert float(supervised_contrastive_loss(labels, tight, 0.1)) < float(supervised_contrastive_loss(labels, emb, 0.1))
    variable = tf.Variable(emb)
    loss = SupervisedContrastiveLoss(0.2)
    with tf.GradientTape() as tape:
        value = loss(labels, variable)
    step = variable.numpy() - 0.01 * tape.gradient(value, variable).numpy()
    assert float(l2_normalize(step)[0] @ l2_normalize(step)[1]) > float(emb[0] @ emb[1])
    assert SupervisedContrastiveLoss.from_config(loss.get_config()).temperature == 0.2
