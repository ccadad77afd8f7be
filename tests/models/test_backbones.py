"""Small, fast tests of parts that the end-to-end runs pass through without pinning down: image decoding (EXIF,
transparency, fit), the CIFAR-10 binary format checks, optimizers and weight decay, layer freezing, strategies,
mixed precision and weight files."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from embedlab.core.backbones import BACKBONES
from embedlab.core.errors import UserError
from embedlab.core.params import ModelParams
from embedlab.models.backbones import BackbonePreprocess, build_models, input_size_for
from embedlab.models.io import load_embedding_model


def test_a_missing_weights_file_is_one_line(tmp_path: Path) -> None:
    import keras

    from embedlab.models.backbones import load_weights

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(UserError, match=r"model.weights: .*nope.weights.h5 does not exist"):
        load_weights(model, str(tmp_path / "nope.weights.h5"))


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_contract_uint8_in_unit_norm_out(tmp_path: Path) -> None:
    models = build_models("mobilenetv2", 32, 5, ModelParams(embedding_dim=24), seed=0)
    model = models.embedding
    assert model.inputs[0].dtype == "uint8" and tuple(model.inputs[0].shape) == (None, 32, 32, 3)
    out = np.asarray(model.predict(_images(6, 32), verbose=0))
    assert out.shape == (6, 24) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    logits = models.trainer.predict(_images(2, 32), verbose=0)["logits"]
    assert logits.shape == (2, 5)
    # The saved file is the whole contract: it reloads without this code's help beyond the registered layers.
    model.save(tmp_path / "m.keras")
    again = load_embedding_model(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(again.predict(_images(6, 32), verbose=0)), out, atol=1e-5)


def test_without_a_projection_the_embedding_is_the_features_and_the_classifier_reads_them_scaled() -> None:
    """``model.embedding_dim: null`` (airbench's head): the unit embedding is the backbone's pooled features, and the
    logits are a dense layer on the features times ``logit_scale``, not on the unit embedding."""
    models = build_models("smallnet", 32, 4, ModelParams(embedding_dim=None, logit_scale=1 / 9), dropout=0.0, seed=0)
    images = _images(5, 32)
    features = np.asarray(models.backbone(models.embedding.get_layer("preprocess")(images.astype("float32"))))
    out = np.asarray(models.embedding(images))
    assert out.shape == (5, features.shape[1]) == (5, 256)
    np.testing.assert_allclose(out, features / np.linalg.norm(features, axis=1, keepdims=True), atol=1e-5)
    dense = models.trainer.get_layer("logits")
    expected = features / 9 @ np.asarray(dense.kernel) + np.asarray(dense.bias)
    np.testing.assert_allclose(np.asarray(models.trainer(images)["logits"]), expected, rtol=1e-4, atol=1e-5)
    assert not any(layer.name == "projection" for layer in models.trainer.layers)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_each_backbone_builds_at_its_minimum_size(name: str) -> None:
    spec = BACKBONES[name]
    models = build_models(name, 32, 3, ModelParams(embedding_dim=8), seed=0)
    side = input_size_for(name, 32, None)
    assert side == max(32, spec.min_size)
    if side != 32:  # Xception: the model upsamples 32 px input to its 71 px floor inside
        assert models.embedding.get_layer("resize").output.shape[1] == spec.min_size
    out = np.asarray(models.embedding(_images(2, 32), training=False))
    assert out.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("mode", "reference"),
    [
        ("caffe", keras.applications.resnet50.preprocess_input),
        ("tf", keras.applications.xception.preprocess_input),
        ("torch", keras.applications.densenet.preprocess_input),
    ],
)
def test_preprocess_layer_matches_keras(mode: str, reference) -> None:
    x = _images(3, 8).astype("float32")
    np.testing.assert_allclose(np.asarray(BackbonePreprocess(mode)(x)), reference(x.copy()), rtol=1e-5, atol=1e-4)


def test_weights_path_round_trip(tmp_path: Path) -> None:
    first = build_models("mobilenetv2", 32, 4, ModelParams(embedding_dim=16), seed=0)
    rng = np.random.default_rng(3)  # weights no fresh build has (cheaper than a training step)
    first.trainer.set_weights([w + rng.normal(0, 0.01, w.shape).astype(w.dtype) for w in first.trainer.get_weights()])
    path = tmp_path / "trained.weights.h5"
    first.trainer.save_weights(path)
    second = build_models("mobilenetv2", 32, 4, ModelParams(embedding_dim=16, weights=str(path)), seed=0)
    x = _images(4, 32, seed=9)
    np.testing.assert_allclose(
        np.asarray(second.embedding(x, training=False)), np.asarray(first.embedding(x, training=False)), atol=1e-6
    )
    with pytest.raises(UserError, match="does not fit"):
        build_models("mobilenetv2", 32, 4, ModelParams(embedding_dim=32, weights=str(path)), seed=0)
    with pytest.raises(UserError, match=r"\.weights\.h5"):
        build_models("mobilenetv2", 32, 4, ModelParams(weights=str(tmp_path / "model.h5")), seed=0)


def test_offline_imagenet_names_file_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    import keras.src.utils.file_utils as file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    # The real Keras download path is taken; only the network is replaced, as on an offline machine.
    monkeypatch.setattr(file_utils, "get_file", offline)
    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(UserError) as err:
        build_models("resnet50", 32, 3, ModelParams(weights="imagenet"), seed=0)
    message = str(err.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path / "keras" / "models") in message
    assert "model.weights=null" in message


@pytest.mark.parametrize(("size", "classes"), [(16, 2), (32, 10), (48, 3)])
def test_smallnet_trains_one_step_at_any_size_and_class_count(size: int, classes: int) -> None:
    models = build_models("smallnet", size, classes, ModelParams(embedding_dim=12, logit_scale=16.0), seed=0)
    assert [layer.name for layer in models.backbone.layers if "pool" in layer.name][-1] == "max_pool"
    models.trainer.compile(optimizer="sgd", loss={"logits": "categorical_crossentropy"})
    images, labels = _images(8, size), np.eye(classes, dtype="float32")[np.arange(8) % classes]
    before = [np.array(w) for w in models.trainer.get_weights()]
    models.trainer.fit(images, {"logits": labels}, epochs=1, batch_size=8, verbose=0)
    assert any(not np.allclose(a, b) for a, b in zip(before, models.trainer.get_weights(), strict=True))
    out = np.asarray(models.embedding(images, training=False))
    assert out.shape == (8, 12)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    logits = np.asarray(models.trainer(images, training=False)["logits"])
    assert logits.shape == (8, classes) and np.isfinite(logits).all()


def test_smallnet_has_no_imagenet_weights() -> None:
    with pytest.raises(UserError, match="smallnet has no ImageNet weights"):
        build_models("smallnet", 32, 3, ModelParams(weights="imagenet"), seed=0)


def test_a_missing_or_corrupt_model_file_is_one_line_naming_its_stage(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"models/vgg16\.keras is missing: run `dvc repro train@vgg16`"):
        load_embedding_model(tmp_path / "models" / "vgg16.keras")
    corrupt = tmp_path / "models" / "vgg16.keras"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match=r"vgg16\.keras is not a readable Keras model .*`dvc repro -f train@vgg16`$"):
        load_embedding_model(corrupt)


def test_a_cosine_head_scores_by_angle_and_survives_saving(tmp_path: Path) -> None:
    """``model.head: cosine``: logits are logit_scale × cos(embedding, class weight), whatever the weights' lengths,
    and the trainer (head included) saves and loads as it computes."""
    models = build_models("smallnet", 16, 3, ModelParams(embedding_dim=8, logit_scale=10.0, head="cosine"), seed=0)
    images = _images(4, 16)
    head = models.trainer.get_layer("logits")
    kernel = np.asarray(head.kernel)
    head.kernel.assign(kernel * np.array([1.0, 5.0, 0.1], np.float32))  # lengths change, directions do not
    embedding = np.asarray(models.embedding(images, training=False))
    logits = np.asarray(models.trainer(images, training=False)["logits"])
    expected = 10.0 * embedding @ (kernel / np.linalg.norm(kernel, axis=0))
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    assert np.abs(logits).max() <= 10.0 + 1e-4
    models.trainer.save(tmp_path / "trainer.keras")
    loaded = keras.saving.load_model(tmp_path / "trainer.keras")
    np.testing.assert_allclose(np.asarray(loaded(images, training=False)["logits"]), logits, atol=1e-5)
