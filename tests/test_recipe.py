"""The small-image recipe's pieces: learning-rate schedules, test-time flip averaging and their params."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from embedlab.core.params import ParamsError, TrainParams, parse_params
from embedlab.embed.embeddings import embed_images
from embedlab.train.optimization import lr_at, make_optimizer


def _lr(*args) -> float:
    return float(lr_at(*args))


def test_lr_schedules_by_hand() -> None:
    # 100 steps, 20 rising from peak/10 to peak, then down to 0 at step 100.
    assert _lr(0, 1.0, 100, "triangular", 0.2) == pytest.approx(0.1)
    assert _lr(10, 1.0, 100, "triangular", 0.2) == pytest.approx(0.55)
    assert _lr(20, 1.0, 100, "triangular", 0.2) == pytest.approx(1.0)
    assert _lr(60, 1.0, 100, "triangular", 0.2) == pytest.approx(0.5)
    assert _lr(100, 1.0, 100, "triangular", 0.2) == pytest.approx(0.0)
    assert _lr(60, 1.0, 100, "cosine", 0.2) == pytest.approx(0.5)
    assert _lr(40, 1.0, 100, "cosine", 0.2) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.25)))
    assert _lr(0, 1.0, 100, "triangular", 0.0) == pytest.approx(1.0)
    assert _lr(37, 0.3, 100, "constant", 0.0) == 0.3


@pytest.mark.parametrize("schedule", ["triangular", "cosine"])
def test_the_optimizer_follows_the_schedule_step_by_step(schedule: str) -> None:
    train = TrainParams(optimizer="sgd", lr=0.4, lr_schedule=schedule, lr_warmup=0.25)
    optimizer = make_optimizer(train, train.lr, total_steps=40)
    variable = keras.Variable(np.zeros(3, "float32"))
    optimizer.build([variable])
    for step in range(41):
        expected = _by_hand(step, 0.4, 40, schedule, 0.25)
        assert float(optimizer.learning_rate) == pytest.approx(expected, abs=1e-6), step
        optimizer.apply_gradients([(np.ones(3, "float32"), variable)])


def _by_hand(step: int, peak: float, total: int, schedule: str, warmup: float) -> float:
    rise = warmup * total
    if step < rise:
        return peak * (0.1 + 0.9 * step / rise)
    left = 1 - (step - rise) / (total - rise)
    return peak * left if schedule == "triangular" else peak * 0.5 * (1 - np.cos(np.pi * left))


def test_constant_schedule_has_no_warmup_to_set() -> None:
    with pytest.raises(ParamsError, match=r"^params.yaml: train.lr_warmup: .*triangular or cosine"):
        parse_params({"train": {"lr_warmup": 0.2}})
    with pytest.raises(ParamsError, match=r"^params.yaml: backbones.smallnet.lr_warmup"):
        parse_params({"backbones": {"smallnet": {"lr_warmup": 0.2}}})
    with pytest.raises(ParamsError, match=r"^params.yaml: train.lr_schedule: Input should be 'constant'"):
        parse_params({"train": {"lr_schedule": "step"}})
    with pytest.raises(ParamsError, match=r"^params.yaml: model.logit_scale: Input should be greater than 0"):
        parse_params({"model": {"logit_scale": 0}})
    with pytest.raises(ParamsError, match=r"^params.yaml: model.weights: smallnet has no ImageNet weights"):
        parse_params({"model": {"weights": "imagenet"}, "backbones": {"smallnet": None}})
    with pytest.raises(ParamsError, match=r"^params.yaml: backbones.smallnet.weights: smallnet has no ImageNet"):
        parse_params({"backbones": {"smallnet": {"weights": "imagenet"}}})
    with pytest.raises(ParamsError, match=r"^params.yaml: embed.flip_average: Input should be a valid boolean"):
        parse_params({"embed": {"flip_average": "sometimes"}})


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
