"""The embed stage's forward pass: flip averaging, and what it prints."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from embedlab.core.params import ModelParams
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


def test_the_forward_pass_reads_ahead_without_tf_data_autotuning() -> None:
    """Keras deletes predict's iterator at the end of the pass and would wait for an autotuning thread that sleeps up
    to 60 s (embedlab.core.runtime.finish_pipeline): every pass reads its batches ahead, in order, with none."""
    seen: list[tuple[bool, np.ndarray]] = []

    class Recorder:
        output_shape = (None, 2)

        def predict(self, dataset, verbose: int = 0) -> np.ndarray:
            pixels = np.concatenate(list(dataset.as_numpy_iterator()))
            seen.append((dataset.options().autotune.enabled, pixels))
            return pixels.reshape(len(pixels), -1)[:, :2].astype(np.float32)

    images = np.random.default_rng(0).integers(0, 256, size=(7, 4, 5, 3), dtype=np.uint8)
    embed_images(Recorder(), images, batch_size=3, progress=False, flip_average=True)
    assert [enabled for enabled, _ in seen] == [False, False]
    np.testing.assert_array_equal(seen[0][1], images)
    np.testing.assert_array_equal(seen[1][1], images[:, :, ::-1])


def test_embedding_prints_a_counted_progress_bar_and_no_warning(capfd: pytest.CaptureFixture[str]) -> None:
    """The embed stage's output in a `dvc repro` log: one line that counts the batches, no "Unknown" steps and no
    Keras warning that the input ran out of data."""
    from embedlab.models.backbones import build_models

    model = build_models("smallnet", 16, 3, ModelParams(embedding_dim=8), seed=0).embedding
    images = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    vectors = embed_images(model, images, batch_size=4, progress=True)
    printed = "".join(capfd.readouterr())
    assert vectors.shape == (10, 8)
    assert printed.count("3/3") == 1 and "1/3" not in printed, printed  # not a terminal: one line at the end
    assert "Unknown" not in printed and "ran out of data" not in printed, printed
