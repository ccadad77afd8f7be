"""The learned stackers, ``weighted`` and ``mlp``: small Keras networks on the concatenated validation embeddings.

Kept apart from :mod:`embedlab.stack.fit` because only these two methods need Keras; the fitted result is plain
NumPy (a :class:`~embedlab.stack.stacker.Stacker`), so applying a stacker never imports TensorFlow.
"""

from __future__ import annotations

import numpy as np

from embedlab.core.params import StackParams
from embedlab.stack.stacker import Stacker

# A small network on a few thousand validation embeddings: Adam's per-weight steps train it at stack.lr with no
# schedule to tune (Keras' optimizer name).
OPTIMIZER = "adam"


def fit_network(
    backbones: list[str],
    blocks: list[np.ndarray],
    *,
    labels: np.ndarray,
    params: StackParams,
    num_classes: int,
) -> tuple[Stacker, dict[str, float]]:
    """Fit the ``weighted`` or ``mlp`` stacker (``params.method``) on validation embeddings with Keras; return it
    as NumPy arrays (a :class:`Stacker`) with the final loss."""
    import keras
    from keras import layers, ops

    from embedlab.models.devices import configure_determinism
    from embedlab.models.losses import TripletLoss

    method = params.method
    configure_determinism(params.seed)
    widths = [b.shape[1] for b in blocks]
    x = np.concatenate(blocks, axis=1).astype(np.float32)
    inputs = keras.Input((x.shape[1],), name="stacked")
    if method == "weighted":
        weighting = _block_weights_layer()(widths, name="block_weights")
        embedding = layers.UnitNormalization(name="embedding")(weighting(inputs))
    else:
        hidden = layers.Dense(params.hidden, activation="relu", name="hidden")(inputs)
        embedding = layers.UnitNormalization(name="embedding")(layers.Dense(params.dim, name="projection")(hidden))
    outputs, losses = {}, {}
    if params.loss in ("softmax", "softmax+triplet"):
        scaled = layers.Rescaling(params.logit_scale, name="scale")(embedding)
        outputs["logits"] = layers.Dense(num_classes, use_bias=False, name="logits")(scaled)
        losses["logits"] = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if params.loss in ("triplet", "softmax+triplet"):
        outputs["embedding"] = layers.Identity(name="triplet")(embedding)
        losses["embedding"] = TripletLoss(params.triplet_mining, params.triplet_margin)
    model = keras.Model(inputs, outputs)
    optimizer = keras.optimizers.get({"class_name": OPTIMIZER, "config": {"learning_rate": params.lr}})
    model.compile(optimizer=optimizer, loss=losses)
    targets = {name: labels for name in outputs}
    history = model.fit(x, targets, batch_size=params.batch_size, epochs=params.epochs, shuffle=True, verbose=0)
    metrics = {"final_loss": round(float(history.history["loss"][-1]), 6)}
    if method == "weighted":
        weights = np.asarray(ops.softmax(weighting.logits)).astype(np.float32)
        return Stacker("weighted", backbones, {"weights": weights}), metrics
    hidden_layer, projection_layer = model.get_layer("hidden"), model.get_layer("projection")
    w1, b1 = (np.asarray(v) for v in hidden_layer.weights)
    w2, b2 = (np.asarray(v) for v in projection_layer.weights)
    return Stacker("mlp", backbones, {"w1": w1, "b1": b1, "w2": w2, "b2": b2}), metrics


def _block_weights_layer() -> type:
    """The Keras layer class, defined on first use so that importing this module does not import Keras."""
    import keras
    from keras import ops

    class BlockWeights(keras.layers.Layer):
        """Scales each backbone's block by √w_b, w = softmax(logits): cosine becomes Σ w_b·cos_b."""

        def __init__(self, widths: list[int], **kwargs) -> None:
            super().__init__(**kwargs)
            self.widths = list(widths)
            self.logits = self.add_weight(shape=(len(widths),), initializer="zeros", name="logits")

        def call(self, x):
            """Each backbone's block scaled by the square root of its weight."""
            scale = ops.sqrt(ops.softmax(self.logits))
            per_column = ops.concatenate([ops.repeat(scale[i : i + 1], w) for i, w in enumerate(self.widths)])
            return x * per_column

    return BlockWeights
