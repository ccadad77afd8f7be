"""BatchNorm recalibration: fresh moving statistics for the final weights, before every validation."""

from __future__ import annotations

import numpy as np


class BatchNormRecalibrator:
    """Set trainable BatchNorm moving statistics to the average of a few training batches' statistics.

    From random init on a small dataset the moving averages lag far behind the fast-changing weights, so the model
    is fine in training mode and near chance in inference mode. Averaging fresh batch statistics with the final
    weights fixes that for the cost of a few forward passes. The forward pass is compiled once per phase (the set of
    trainable layers is part of the graph): BatchNorm momentum is 0 while tracing, so each call leaves one batch's
    statistics in the moving variables, which are read back and averaged.
    """

    def __init__(self, model) -> None:
        import keras
        import tensorflow as tf

        self.layers = [
            layer
            for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
        ]
        self.model = model
        self._forward = tf.function(self._batch_statistics, reduce_retracing=True)

    def _batch_statistics(self, images):
        self.model(images, training=True)
        return [layer.moving_mean.value for layer in self.layers], [
            layer.moving_variance.value for layer in self.layers
        ]

    def __call__(self, images: np.ndarray, batch_size: int) -> None:
        """Recalibrate from ``images`` (the first few batches of the epoch's order), ``batch_size`` at a time."""
        if not self.layers or not len(images):
            return
        original = [layer.momentum for layer in self.layers]
        for layer in self.layers:
            layer.momentum = 0.0
        try:
            totals = None
            batches = range(0, len(images), batch_size)
            for start in batches:
                means, variances = self._forward(images[start : start + batch_size])
                stats = [np.asarray(v, dtype=np.float64) for v in (*means, *variances)]
                totals = stats if totals is None else [t + s for t, s in zip(totals, stats, strict=True)]
            assert totals is not None
            n = len(self.layers)
            for i, layer in enumerate(self.layers):
                layer.moving_mean.assign((totals[i] / len(batches)).astype(layer.moving_mean.dtype))
                layer.moving_variance.assign((totals[n + i] / len(batches)).astype(layer.moving_variance.dtype))
        finally:
            for layer, momentum in zip(self.layers, original, strict=True):
                layer.momentum = momentum
