"""What one training step does: lr schedules, optimizers and their weight decay, what trains, BatchNorm shift
steps, lookahead."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from embedlab.core.params import ParamsError, TrainParams, parse_params
from embedlab.train.optimization import lr_at, make_optimizer


@pytest.mark.parametrize(
    ("optimizer", "decay", "cls", "expected"),
    [
        ("adam", 0.0, "Adam", None),
        ("adam", 0.01, "Adam", 0.01),
        ("adamw", 0.02, "AdamW", 0.02),
        ("sgd", 0.005, "SGD", 0.005),
        ("rmsprop", 0.001, "RMSprop", 0.001),
    ],
)
def test_each_optimizer_gets_the_weight_decay_asked_for(optimizer: str, decay: float, cls: str, expected) -> None:
    from embedlab.train.optimization import make_optimizer

    built = make_optimizer(TrainParams(optimizer=optimizer, weight_decay=decay, lr=0.01), 0.01, 100)
    assert type(built).__name__ == cls
    assert built.weight_decay == (pytest.approx(expected) if expected else None)
    if optimizer == "sgd":
        assert built.nesterov and built.momentum == pytest.approx(0.9)


def test_unfreeze_top_layers_and_keep_pretrained_batchnorm_frozen() -> None:
    import keras

    from embedlab.train.loop import _set_trainable

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Conv2D(4, 3, name="c2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    backbone = keras.Model(inputs, x)

    def trainable() -> list[str]:
        return [layer.name for layer in backbone.layers if layer.trainable]

    _set_trainable(backbone, 0, pretrained=True)  # warm-up: the whole backbone frozen
    assert trainable() == []
    _set_trainable(backbone, 2, pretrained=True)  # the top two layers, but a pretrained BatchNorm stays frozen
    assert trainable() == ["c2"]
    _set_trainable(backbone, "all", pretrained=False)  # from scratch: BatchNorm learns too
    assert {"c1", "bn1", "c2", "bn2"} <= set(trainable())


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


def test_batchnorm_shifts_step_bn_bias_lr_scale_times_faster() -> None:
    import keras

    from embedlab.core.params import TrainParams
    from embedlab.train.optimization import batchnorm_shift_paths, make_optimizer

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)).astype("float32"), np.eye(3, dtype="float32")[rng.integers(0, 3, 32)]
    steps = []
    for scale in (1.0, 64.0):
        keras.utils.set_random_seed(0)
        layers = [keras.layers.Dense(4, name="hidden"), keras.layers.BatchNormalization(name="norm")]
        model = keras.Sequential([keras.Input((6,)), *layers, keras.layers.Dense(3, name="out")], name="net")
        before = [np.array(v) for v in model.trainable_variables]
        train = TrainParams(optimizer="sgd", lr=0.01, momentum=0.5, bn_bias_lr_scale=scale)
        model.compile(make_optimizer(train, train.lr, 1, batchnorm_shift_paths(model)), "categorical_crossentropy")
        model.train_on_batch(x, y)
        steps.append({v.path: np.array(v) - b for v, b in zip(model.trainable_variables, before, strict=True)})
    (beta,) = batchnorm_shift_paths(model)
    for path, step in steps[0].items():
        expected = step * 64 if path == beta else step  # the first step: a plain SGD step, lr x 64 for the shift
        np.testing.assert_allclose(steps[1][path], expected, rtol=1e-4, atol=1e-7)
    assert np.abs(steps[0][beta]).max() > 0


class _FakeOptimizer:
    def __init__(self) -> None:
        import keras

        self.iterations = keras.Variable(0, dtype="int64")


class _FakeModel:
    def __init__(self) -> None:
        self.optimizer = _FakeOptimizer()


def test_lookahead_averages_as_airbench_does() -> None:
    import keras

    from embedlab.train.optimization import LOOKAHEAD_DECAY, lookahead_callback

    total = 100
    weights = keras.Variable(np.zeros(3, "float32"))
    callback = lookahead_callback([weights], total)
    callback.set_model(_FakeModel())
    callback.on_train_begin()
    average, live = None, np.zeros(3)
    for step in range(1, total + 1):  # the optimizer moves the weights by +1 a step
        live = live + 1
        weights.assign(live.astype("float32"))
        callback.model.optimizer.iterations.assign(step)
        callback.on_train_batch_end(step)
        if step > 30 and step % 5 == 0:  # by hand: from 30 % of the steps, every 5 steps
            if average is None:
                average = live.copy()
            else:
                rho = LOOKAHEAD_DECAY**5 * (step / total) ** 3
                average = average + (1 - rho) * (live - average)
                live = average.copy()
        np.testing.assert_allclose(np.asarray(weights), live, rtol=1e-5)
    assert live[0] < 100 - 10  # the averaging held the weights back
    weights.assign(np.full(3, 1e3, "float32"))
    callback.on_train_end()  # the live weights end each fit as the average
    np.testing.assert_allclose(np.asarray(weights), average, rtol=1e-5)
