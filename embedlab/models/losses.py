"""Metric-learning losses on the unit embedding, in Keras 3 ops (TF Similarity does not support Keras 3): the
triplet loss and the supervised contrastive loss.

Embeddings are expected L2-normalised, so the cosine distance is ``1 - a·b`` (0 = same direction, 2 = opposite).

* ``batch_hard`` (Hermans et al. 2017): per anchor, the farthest positive against the nearest negative.
* ``semi_hard`` (Schroff et al. 2015, FaceNet): per anchor-positive pair, the nearest negative that is still
  farther than the positive; when no such negative exists, the farthest negative (as TF-Addons does).

* supervised contrastive (Khosla et al. 2020, their L_out): per anchor, the mean over its positives of the log
  softmax of the positive's similarity against every other image of the batch, at a temperature. Unlike a triplet,
  every pair of the batch pulls or pushes: the loss shapes whole neighbourhoods, which is what mAP@k reads.

Anchors without a positive or a negative in the batch do not count; see :mod:`embedlab.data.sampling` for the sampler
that guarantees at least two images of each class per batch.
"""

from __future__ import annotations

import keras
from keras import ops

_BIG = 1e9


def _pairwise(labels, embeddings):
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    embeddings = ops.cast(embeddings, "float32")
    distance = ops.maximum(1.0 - ops.matmul(embeddings, ops.transpose(embeddings)), 0.0)
    same = ops.equal(ops.expand_dims(labels, 0), ops.expand_dims(labels, 1))
    eye = ops.eye(ops.shape(labels)[0], dtype="bool")
    positive = ops.logical_and(same, ops.logical_not(eye))
    negative = ops.logical_not(same)
    return distance, positive, negative


def batch_hard_triplet_loss(labels, embeddings, margin: float = 0.2):
    """Mean over anchors of max(0, hardest positive distance − hardest negative distance + margin); cosine distance,
    anchors without a positive or a negative in the batch left out."""
    distance, positive, negative = _pairwise(labels, embeddings)
    hardest_positive = ops.max(ops.where(positive, distance, -_BIG), axis=1)
    hardest_negative = ops.min(ops.where(negative, distance, _BIG), axis=1)
    valid = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
    losses = ops.maximum(hardest_positive - hardest_negative + margin, 0.0)
    count = ops.maximum(ops.sum(ops.cast(valid, "float32")), 1.0)
    return ops.sum(ops.where(valid, losses, 0.0)) / count


def semi_hard_triplet_loss(labels, embeddings, margin: float = 0.2):
    """Mean over (anchor, positive) pairs of max(0, d(a, p) − d(a, n) + margin), n the closest negative farther than
    the positive (FaceNet's semi-hard mining), or the farthest negative when none is (as TensorFlow Addons does)."""
    distance, positive, negative = _pairwise(labels, embeddings)
    d_ap = ops.expand_dims(distance, 2)  # [anchor, positive, 1]
    d_an = ops.expand_dims(distance, 1)  # [anchor, 1, negative]
    is_negative = ops.expand_dims(negative, 1)
    semi_hard = ops.logical_and(is_negative, ops.greater(d_an, d_ap))
    nearest_semi_hard = ops.min(ops.where(semi_hard, d_an, _BIG), axis=2)
    farthest_negative = ops.max(ops.where(negative, distance, -_BIG), axis=1, keepdims=True)
    chosen = ops.where(ops.any(semi_hard, axis=2), nearest_semi_hard, farthest_negative)
    has_negative = ops.any(negative, axis=1, keepdims=True)
    valid = ops.logical_and(positive, has_negative)
    losses = ops.maximum(distance - chosen + margin, 0.0)
    count = ops.maximum(ops.sum(ops.cast(valid, "float32")), 1.0)
    return ops.sum(ops.where(valid, losses, 0.0)) / count


def supervised_contrastive_loss(labels, embeddings, temperature: float = 0.1):
    """Mean over anchors of −(1/|P(i)|) Σ_{p ∈ P(i)} log(exp(s_ip/τ) / Σ_{a ≠ i} exp(s_ia/τ)), s the cosine
    similarity and P(i) the anchor's positives; anchors without a positive in the batch left out."""
    distance, positive, negative = _pairwise(labels, embeddings)
    others = ops.logical_or(positive, negative)
    logits = ops.where(others, (1.0 - distance) / temperature, -_BIG)
    log_probability = logits - ops.logsumexp(logits, axis=1, keepdims=True)
    positives = ops.sum(ops.cast(positive, "float32"), axis=1)
    mean_positive = ops.sum(ops.where(positive, log_probability, 0.0), axis=1) / ops.maximum(positives, 1.0)
    valid = positives > 0
    count = ops.maximum(ops.sum(ops.cast(valid, "float32")), 1.0)
    return -ops.sum(ops.where(valid, mean_positive, 0.0)) / count


class _BatchLoss(keras.losses.Loss):
    """A loss over the whole batch's embeddings (``y_true``: integer labels; ``y_pred``: L2-normalised embeddings),
    broadcast per sample because Keras reduces per-sample losses."""

    def batch_loss(self, labels, embeddings):
        """The loss of the whole batch, a scalar."""
        raise NotImplementedError

    def call(self, y_true, y_pred):
        """The batch's loss, once per sample."""
        return ops.ones_like(y_pred[:, 0]) * self.batch_loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="embedlab")
class TripletLoss(_BatchLoss):
    """The batch-hard or semi-hard triplet loss of the batch."""

    def __init__(self, mining: str = "batch_hard", margin: float = 0.2, name: str = "triplet", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        if mining not in ("batch_hard", "semi_hard"):
            raise ValueError(f"unknown mining {mining!r}")
        self.mining, self.margin = mining, margin

    def batch_loss(self, labels, embeddings):
        """The mining's triplet loss at the margin."""
        fn = batch_hard_triplet_loss if self.mining == "batch_hard" else semi_hard_triplet_loss
        return fn(labels, embeddings, self.margin)

    def get_config(self) -> dict:
        """Keras serialisation: the mining and margin."""
        return {**super().get_config(), "mining": self.mining, "margin": self.margin}


@keras.saving.register_keras_serializable(package="embedlab")
class SupervisedContrastiveLoss(_BatchLoss):
    """The supervised contrastive loss of the batch at ``temperature``."""

    def __init__(self, temperature: float = 0.1, name: str = "supcon", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.temperature = temperature

    def batch_loss(self, labels, embeddings):
        """The loss at the temperature."""
        return supervised_contrastive_loss(labels, embeddings, self.temperature)

    def get_config(self) -> dict:
        """Keras serialisation: the temperature."""
        return {**super().get_config(), "temperature": self.temperature}
