"""The embedding model contract, built around any backbone of the registry (:mod:`embedlab.core.backbones`).

The saved embedding model takes **raw uint8 RGB** at ``data.image_size`` and returns an L2-normalised float32
embedding; the cast, the resize to the backbone's input size, the backbone's own ``preprocess_input``, the
backbone, dropout, the projection and the L2 norm all live inside it, so ``embed``, ``search`` and any user call
it the same way. A classifier head on the embedding is kept separately for the softmax loss and accuracy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import ops

from embedlab.core.backbones import BACKBONES
from embedlab.core.errors import UserError
from embedlab.core.params import ModelParams
from embedlab.models.devices import init_seed
from embedlab.models.smallnet import build_smallnet

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="embedlab")
class BackbonePreprocess(keras.layers.Layer):
    """The arithmetic of ``keras.applications.<family>.preprocess_input`` on float RGB in [0, 255], as a layer."""

    def __init__(self, mode: str, **kwargs) -> None:
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf", "torch"):
            raise ValueError(f"unknown preprocess mode {mode!r}")
        self.mode = mode

    def call(self, x):
        """The family's preprocessing of float RGB in [0, 255]."""
        match self.mode:
            case "tf":
                return x / 127.5 - 1.0
            case "torch":
                mean = ops.convert_to_tensor(_IMAGENET_MEAN, dtype=x.dtype)
                std = ops.convert_to_tensor(_IMAGENET_STD, dtype=x.dtype)
                return (x / 255.0 - mean) / std
            case "caffe":
                mean = ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)
                return ops.flip(x, axis=-1) - mean
            case other:
                raise ValueError(f"unknown preprocess mode {other!r}")

    def get_config(self) -> dict:
        """Keras serialisation: the mode."""
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="embedlab")
class L2Normalize(keras.layers.Layer):
    """Unit-length rows (float32 even under mixed precision)."""

    def call(self, x):
        """Rows divided by their length."""
        x = ops.cast(x, "float32")
        return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-30))


@keras.saving.register_keras_serializable(package="embedlab")
class CosineLogits(keras.layers.Layer):
    """``scale`` × the cosine between each row and each class's weight vector (a normalised-softmax head, NormFace):
    only directions count, so the classes the softmax separates are separated by angle, as cosine search ranks."""

    def __init__(self, units: int, scale: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.units, self.scale = units, scale

    def build(self, input_shape) -> None:
        """One weight vector per class."""
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform", name="kernel")

    def call(self, x):
        """Cosine logits, scaled."""
        x = ops.cast(x, "float32")
        x = x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-30))
        kernel = ops.cast(self.kernel, "float32")
        kernel = kernel / ops.sqrt(ops.maximum(ops.sum(ops.square(kernel), axis=0, keepdims=True), 1e-30))
        return self.scale * ops.matmul(x, kernel)

    def get_config(self) -> dict:
        """What rebuilds the layer."""
        return {**super().get_config(), "units": self.units, "scale": self.scale}


@keras.saving.register_keras_serializable(package="embedlab")
class StopGradient(keras.layers.Layer):
    """Identity forward, no gradient backward: a linear probe that reads the embedding without shaping it."""

    def call(self, x):
        """The input, detached from the gradient."""
        return ops.stop_gradient(x)


def input_size_for(name: str, image_size: int, requested: int | None) -> int:
    """The backbone's input side: the requested size, else the image size, never below the architecture's floor."""
    return max(requested or image_size, BACKBONES[name].min_size)


def keras_weights_dir() -> Path:
    """Where keras.applications looks for (and downloads) ImageNet weights."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def _build_backbone(
    name: str, weights: str | None, side: int, *, bn_scale: bool, widths: tuple[int, ...], seed: int
) -> keras.Model:
    """Instantiate the Keras application; an offline ImageNet download fails with the file and folder to fix it."""
    spec = BACKBONES[name]
    if weights == "imagenet" and not spec.imagenet_weights:
        raise UserError(f"model.weights=imagenet: {name} has no ImageNet weights; use null or a .weights.h5 path")
    if spec.build == "SmallNet":
        return build_smallnet(side, seed=seed, widths=widths, bn_scale=bn_scale)
    application = getattr(keras.applications, spec.build)
    keras_weights = "imagenet" if weights == "imagenet" else None
    try:
        return application(include_top=False, weights=keras_weights, input_shape=(side, side, 3), pooling="avg")
    except Exception as err:
        if keras_weights is None:
            raise
        filename = spec.weights_file.format(size=_mobilenet_size(side))
        raise UserError(
            f"model.weights=imagenet: could not download {filename} ({type(err).__name__}). Put that file in "
            f"{keras_weights_dir()}/ (or set KERAS_HOME), or use model.weights=null for random init, or a path "
            "to a .weights.h5 file."
        ) from err


def _he_init(backbone: keras.Model, seed: int) -> None:
    """Re-draw conv kernels He-normal. Keras applications default to Glorot-uniform, under which a deep plain ReLU
    stack without normalisation (VGG16) starts with vanishing activations and stays at chance for many epochs."""
    convs = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    for i, layer in enumerate(convs):
        layer.kernel.assign(keras.initializers.HeNormal(seed=init_seed(seed, i))(layer.kernel.shape))


def _mobilenet_size(input_size: int) -> int:
    return min((96, 128, 160, 192, 224), key=lambda s: abs(s - input_size))


@dataclass
class Models:
    """The three views of one built model: the saved embedding model, the trainer with the classifier head, and the
    backbone (for freezing)."""

    embedding: keras.Model  # uint8 image -> unit embedding
    trainer: keras.Model  # uint8 image -> {"embedding", "logits"}
    backbone: keras.Model


def build_models(
    name: str,
    image_size: int,
    num_classes: int,
    model: ModelParams | None = None,
    *,
    seed: int,
    dropout: float = 0.2,
    bn_momentum: float | None = None,
    probe_head: bool = False,
) -> Models:
    """Build the embedding model (the saved contract) and the training wrapper that adds the classifier head, as the
    ``model.*`` params say (their defaults when ``model`` is None).

    ``seed`` (``train.seed``) decides every initial weight: the backbone's own seeded initialisers, and through
    Keras' global seed (set from the same seed by ``configure_determinism``) every unseeded one."""
    model = model or ModelParams()
    weights, embedding_dim, logit_scale = model.weights, model.embedding_dim, model.logit_scale
    if name not in BACKBONES:
        raise UserError(f"model backbone {name!r} unknown; choose from {', '.join(BACKBONES)}")
    spec = BACKBONES[name]
    side = input_size_for(name, image_size, model.input_size)
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0, dtype="float32", name="cast")(inputs)
    if side != image_size:
        x = keras.layers.Resizing(side, side, interpolation="bilinear", name="resize")(x)
    x = BackbonePreprocess(spec.preprocess, name="preprocess")(x)
    backbone = _build_backbone(name, weights, side, bn_scale=model.bn_scale, widths=tuple(model.widths), seed=seed)
    backbone.name = f"{name}_backbone"
    if weights is None and not any(isinstance(layer, keras.layers.BatchNormalization) for layer in backbone.layers):
        _he_init(backbone, seed)
    if bn_momentum is not None:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    x = keras.layers.Dropout(dropout, name="dropout")(backbone(x))
    if embedding_dim is None:  # the pooled features are the embedding, and the classifier reads them as they are
        embedding = L2Normalize(name="embedding")(x)
        classifier_input = x
    else:
        embedding = L2Normalize(name="embedding")(keras.layers.Dense(embedding_dim, name="projection")(x))
        classifier_input = embedding
    embedding_model = keras.Model(inputs, embedding, name=f"{name}_embedding")
    # With a triplet-only loss the classifier is a linear probe: it learns from the embedding but must not shape it.
    head_input = StopGradient(name="probe")(classifier_input) if probe_head else classifier_input
    if model.head == "cosine":
        logits = CosineLogits(num_classes, logit_scale, dtype="float32", name="logits")(head_input)
    else:
        if logit_scale != 1.0:
            # A unit embedding caps the logits at |W|; under weight decay they stay small and the softmax gradient
            # weak. A fixed scale (a normalised-softmax head) lets the classifier saturate from the first epoch.
            # On raw features (embedding_dim null) a scale below 1 tempers large logits (airbench's 1/9).
            head_input = keras.layers.Rescaling(logit_scale, name="logit_scale")(head_input)
        logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(head_input)
    trainer = keras.Model(inputs, {"embedding": embedding, "logits": logits}, name=f"{name}_trainer")
    if weights not in (None, "imagenet"):
        load_weights(trainer, weights)
    return Models(embedding_model, trainer, backbone)


def load_weights(model: keras.Model, path: str) -> None:
    """Load a ``.weights.h5`` file saved from a model of the same backbone and head sizes."""
    file = Path(path).expanduser()
    if not file.name.endswith(".weights.h5"):
        raise UserError(f"model.weights: {path} must be 'imagenet', null or a path to a .weights.h5 file")
    if not file.is_file():
        raise UserError(f"model.weights: {path} does not exist")
    try:
        model.load_weights(file)
    except ValueError as err:
        raise UserError(f"model.weights: {path} does not fit this model ({err})".replace("\n", " ")) from err
