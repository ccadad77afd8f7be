"""The embed stage's forward pass: test-time views (flips, shifts), and what it prints."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from embedlab.augment.test_time import TestTimeViews, mirror, shift
from embedlab.core.params import ModelParams
from embedlab.embed.embeddings import embed_images

FLIPS = TestTimeViews.of(flip=True, translate=False)


def _linear_model() -> keras.Model:
    """A linear map of the pixels: any change of view changes its output."""
    inputs = keras.Input((4, 5, 3), dtype="uint8")
    flat = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, keras.layers.Dense(6, kernel_initializer=keras.initializers.RandomNormal(seed=1))(flat))


def test_flip_average_is_the_normalised_mean_of_image_and_mirror() -> None:
    model = _linear_model()
    images = np.random.default_rng(0).integers(0, 256, size=(7, 4, 5, 3), dtype=np.uint8)
    plain = embed_images(model, images, batch_size=3, progress=False)
    mirrored = np.asarray(model.predict(images[:, :, ::-1], verbose=0))
    expected = plain + mirrored
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    averaged = embed_images(model, images, batch_size=3, progress=False, views=FLIPS)
    np.testing.assert_allclose(averaged, expected, atol=1e-5)
    # An image that is its own mirror embeds the same either way (up to the norm).
    symmetric = np.concatenate([images[:, :, :2], images[:, :, 2:3], images[:, :, :2][:, :, ::-1]], axis=2)
    a = embed_images(model, symmetric, progress=False, views=FLIPS)
    b = embed_images(model, symmetric, progress=False)
    np.testing.assert_allclose(a, b / np.linalg.norm(b, axis=1, keepdims=True), atol=1e-5)


def test_translate_average_adds_the_shifted_views_at_half_weight() -> None:
    model = _linear_model()
    images = np.random.default_rng(0).integers(0, 256, size=(7, 4, 5, 3), dtype=np.uint8)

    def out(x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(x, verbose=0), np.float64)

    flips = out(images) + out(mirror(images))
    shifted = sum(out(shift(images, step)) + out(mirror(shift(images, step))) for step in (1, -1))
    expected = 2 * flips + shifted
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    level2 = TestTimeViews.of(flip=True, translate=True)
    np.testing.assert_allclose(
        embed_images(model, images, batch_size=3, progress=False, views=level2), expected, atol=1e-5
    )
    # without flips: the image and its two shifts
    alone = 2 * out(images) + out(shift(images, 1)) + out(shift(images, -1))
    alone /= np.linalg.norm(alone, axis=1, keepdims=True)
    shifts = TestTimeViews.of(flip=False, translate=True)
    np.testing.assert_allclose(embed_images(model, images, progress=False, views=shifts), alone, atol=1e-5)


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
    embed_images(Recorder(), images, batch_size=3, progress=False, views=FLIPS)
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
