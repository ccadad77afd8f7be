"""airbench's training choices as params: alternating flip, whole-pixel shifts, BatchNorm without a learned scale
and with faster shifts, Nesterov momentum, and lookahead; each checked against a hand computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedlab.core.params import ParamsError, parse_params


def test_alternating_flip_shows_every_image_both_ways_in_two_epochs() -> None:
    from embedlab.core.params import TrainParams
    from embedlab.train.data import TrainingData

    images = np.random.default_rng(0).integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    data = TrainingData({"train": (images, np.arange(40) % 2)}, 2, 4, [], TrainParams(batch_size=16, seed=3))
    order = np.random.default_rng(1).permutation(40)
    seen = []
    for epoch in range(3):
        batches = data.train_dataset(order, None, flip_parity=epoch % 2).as_numpy_iterator()
        seen.append(np.concatenate([x for x, _ in batches]))
    mirrored = [np.all(epoch == images[order][:, :, ::-1], axis=(1, 2, 3)) for epoch in seen]
    kept = [np.all(epoch == images[order], axis=(1, 2, 3)) for epoch in seen]
    assert np.all(mirrored[0] | kept[0]) and 10 < mirrored[0].sum() < 30  # a fair coin per image
    np.testing.assert_array_equal(mirrored[1], kept[0])  # the odd epoch flips every image the other way
    np.testing.assert_array_equal(mirrored[2], mirrored[0])  # and the next even epoch flips it back
    coins = np.random.default_rng(3).random(40) < 0.5  # the seeded coins, in the data's row order
    np.testing.assert_array_equal(mirrored[0], coins[order])


def test_nearest_shift_moves_images_by_whole_pixels() -> None:
    from embedlab.augment.layers import build_augmentation
    from embedlab.core.params import AugmentParams

    images = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3)).astype("float32")
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="symmetric")  # Keras reflect: edge repeated
    for interpolation, whole in (("nearest", True), ("bilinear", False)):
        augment = build_augmentation(AugmentParams(shift=2 / 16, shift_interpolation=interpolation), seed=0)
        out = np.asarray(augment(images, training=True))
        crops = [padded[:, 2 + dy : 18 + dy, 2 + dx : 18 + dx] for dy in range(-2, 3) for dx in range(-2, 3)]
        matched = np.any([np.all(np.abs(out - c) < 1e-3, axis=(1, 2, 3)) for c in crops], axis=0)
        assert matched.all() if whole else not matched.all()


def test_smallnet_without_batchnorm_scale_has_shifts_only() -> None:
    import keras

    from embedlab.models.backbones import build_models

    for bn_scale in (True, False):
        models = build_models("smallnet", 32, 10, bn_scale=bn_scale, seed=0)
        norms = [lay for lay in models.backbone.layers if isinstance(lay, keras.layers.BatchNormalization)]
        assert len(norms) == 6 and all(lay.scale is bn_scale and lay.center for lay in norms)


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


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"augment": {"alternate_flip": True}}, "params.yaml: augment.alternate_flip: needs augment.flip horizontal"),
        ({"augment": {"shift_interpolation": "cubic"}}, "params.yaml: augment.shift_interpolation: Input should be"),
        ({"train": {"momentum": 0.85}}, "params.yaml: train.momentum: only train.optimizer sgd uses it"),
        ({"train": {"optimizer": "sgd", "momentum": 1.0}}, "params.yaml: train.momentum: Input should be less"),
        ({"train": {"bn_bias_lr_scale": 64}}, "params.yaml: train.bn_bias_lr_scale: only train.optimizer sgd"),
        ({"train": {"optimizer": "sgd", "bn_bias_lr_scale": 0.5}}, "params.yaml: train.bn_bias_lr_scale: Input should"),
        ({"model": {"bn_scale": False}}, "params.yaml: model.bn_scale: densenet121 has no BatchNorm scale option"),
        ({"model": {"freeze_stem": True}}, "params.yaml: model.freeze_stem: densenet121 has no stem to freeze"),
        ({"backbones": {"vgg16": {"bn_scale": False}}}, "params.yaml: backbones.vgg16.bn_scale: vgg16 has no"),
        (
            {"backbones": {"smallnet": {"lookahead": "often"}}},
            "params.yaml: backbones.smallnet.lookahead: Input should",
        ),
    ],
)
def test_recipe_params_are_checked_before_work_starts(raw: dict, message: str) -> None:
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_the_airbench_recipe_trains_smallnet_through_the_train_stage(tmp_path: Path) -> None:
    from embedlab.data.download.digits import write_digits
    from embedlab.data.prepare import prepare
    from embedlab.models.backbones import build_models
    from embedlab.models.smallnet import whiten_stem
    from embedlab.train.data import TrainingData
    from embedlab.train.loop import Trainer

    recipe = {
        **{"optimizer": "sgd", "lr": 0.5, "lr_schedule": "triangular", "lr_warmup": 0.2, "momentum": 0.85},
        **{"weight_decay": 0.005, "bn_bias_lr_scale": 64, "lookahead": True, "bn_scale": False, "dropout": 0.0},
        **{"whiten_stem": True, "freeze_stem": True, "identity_init": True, "epochs": 4, "batch_size": 64},
    }
    augment = {"flip": "horizontal", "alternate_flip": True, "shift": 0.1, "shift_interpolation": "nearest"}
    raw = {
        "data": {"max_per_class": 30},
        "backbones": {"smallnet": recipe},
        "train": {"checkpoint_interval": 0},
        "augment": augment,
    }
    params = parse_params(raw)
    write_digits(tmp_path / "raw")
    prepare(tmp_path / "raw", tmp_path / "prepared", params.data)
    model_params, train_params = params.for_backbone("smallnet")
    result = Trainer(
        "smallnet", model_params, train_params, params.augment, prepared_dir=tmp_path / "prepared",
        work_dir=tmp_path / "work", live_dir=tmp_path / "live",
    ).run()  # fmt: skip
    assert result.metrics["val_accuracy"] > 0.3, result.metrics  # ten classes: chance is 0.1; mirrored digits
    # model.freeze_stem: the stem's kernel is still the whitening it started as; its bias trained
    built = build_models("smallnet", 32, 10, dropout=0.0, bn_scale=False, seed=0)
    train_images = TrainingData.load(tmp_path / "prepared", train_params).arrays["train"][0]
    whiten_stem(built.embedding, built.backbone, train_images, seed=train_params.seed)
    stem = result.embedding.get_layer("smallnet_backbone").get_layer("stem_conv")
    np.testing.assert_array_equal(np.asarray(stem.kernel), np.asarray(built.backbone.get_layer("stem_conv").kernel))
    assert np.abs(np.asarray(stem.bias)).max() > 0
