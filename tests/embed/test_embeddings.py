"""The embed stage's forward pass: flip averaging."""

from __future__ import annotations

import keras
import numpy as np

from embedlab.embed.embeddings import embed_images


def test_flip_average_is_the_normalised_mean_of_image_and_mirror() -> None:
    inputs = keras.Input((4, 5, 3), dtype="uint8")
    flat = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(6, kernel_initializer=keras.initializers.RandomNormal(seed=1))(flat))
    images = np.random.default_rng(0).integers(0, 256, size=(7, 4, 5, 3), dtype=np.uint8)
    plain = embed_images(model, images, batch_size=3, progress=False)
    mirrored = np.asarray(model.predict(images[:, :, ::-1], verbose=0))
    expected = plain + mirrored
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    averaged = embed_images(model, images, batch_size=3, progress=False, flip_average=True)
    np.testing.assert_allclose(averaged, expected, atol=1e-5)
    # An image that is its own mirror embeds the same either way (up to the norm).
    symmetric = np.concatenate([images[:, :, :2], images[:, :, 2:3], images[:, :, :2][:, :, ::-1]], axis=2)
    a = embed_images(model, symmetric, progress=False, flip_average=True)
    b = embed_images(model, symmetric, progress=False)
    np.testing.assert_allclose(a, b / np.linalg.norm(b, axis=1, keepdims=True), atol=1e-5)
