"""airbench's recipe as params: checked before work starts, and trained through the train stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedlab.core.params import ModelParams, ParamsError, parse_params


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
    from embedlab.augment.test_time import TestTimeViews
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
    # trained on mirrors and shifts: the classifier is scored over airbench's views too (flips; flips and 1 px shifts)
    data = TrainingData.load(tmp_path / "prepared", train_params)
    for key, translate in (("test_flip_averaged_accuracy", False), ("test_flip_translate_averaged_accuracy", True)):
        views = TestTimeViews.of(flip=True, translate=translate)
        assert result.metrics[key] == round(data.averaged_accuracy(result.trainer, "test", views), 6), key
    # model.freeze_stem: the stem's kernel is still the whitening it started as; its bias trained
    built = build_models("smallnet", 32, 10, ModelParams(bn_scale=False), dropout=0.0, seed=0)
    train_images = data.splits["train"][0]
    whiten_stem(built.embedding, built.backbone, train_images, seed=train_params.seed)
    stem = result.embedding.get_layer("smallnet_backbone").get_layer("stem_conv")
    np.testing.assert_array_equal(np.asarray(stem.kernel), np.asarray(built.backbone.get_layer("stem_conv").kernel))
    assert np.abs(np.asarray(stem.bias)).max() > 0
