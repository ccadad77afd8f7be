"""The sections of ``params.yaml`` as typed, validated models: each field's type is what the key accepts.

:mod:`embedlab.core.params` assembles them into :class:`~embedlab.core.params.Params` and turns a validation error
line naming the key.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from embedlab.core.errors import UserError

Fraction = Annotated[float, Field(gt=0, lt=1)]
# YAML 1.1 reads a bare on/off (as `dvc exp run -S key=on` writes it) as a boolean: take it as the word.
AutoOnOff = Annotated[
    Literal["auto", "on", "off"], BeforeValidator(lambda v: ("on" if v else "off") if isinstance(v, bool) else v)
]
NonNegativeFraction = Annotated[float, Field(ge=0, lt=1)]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


class ParamsError(UserError):
    """A params.yaml value is invalid; the message is one line that names the key."""


class _Section(BaseModel):
    """A params.yaml section: unknown keys are errors, values are read-only, and values are taken as written: a
    quoted ``"48"`` is text, not a number, so it is refused where a number is expected (strict mode)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DataParams(_Section):
    """``data:``: the dataset source and how images become ``data/prepared`` (size, fit, splits)."""

    source: Literal["digits", "cifar10", "folder"] = "digits"
    url: str = CIFAR10_URL
    path: str | None = None
    image_size: Annotated[int, Field(ge=8, le=1024)] = 32
    fit: Literal["crop", "pad", "stretch"] = "crop"
    val_fraction: Fraction = 0.15
    test_fraction: Fraction = 0.3
    max_per_class: Annotated[int, Field(ge=2)] | None = None
    seed: Annotated[int, Field(ge=0)] = 42

    @model_validator(mode="after")
    def _check(self) -> DataParams:
        if self.source == "folder" and not self.path:
            raise ValueError("path: required when data.source is folder (a directory or .tar/.tar.gz/.zip)")
        return self


class AugmentParams(_Section):
    """``augment:``: on-the-fly training augmentation, each kind off at 0 / none."""

    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"] = "none"
    rotation: Annotated[float, Field(ge=0, le=0.5)] = 0.0
    zoom: NonNegativeFraction = 0.0
    shift: NonNegativeFraction = 0.0
    shear: NonNegativeFraction = 0.0
    contrast: NonNegativeFraction = 0.0
    # bilinear: sub-pixel shifts (resampled, slightly blurred); nearest: whole-pixel shifts, as a random crop of a
    # reflect-padded image (airbench's translation)
    shift_interpolation: Literal["bilinear", "nearest"] = "bilinear"
    # airbench's derandomised flip: each image mirrored (or not) by a seeded coin in epoch 0, all flipped the other
    # way every odd epoch, so consecutive epochs always show both sides
    alternate_flip: bool = False

    @model_validator(mode="after")
    def _check(self) -> AugmentParams:
        if self.alternate_flip and self.flip != "horizontal":
            raise ValueError(f"alternate_flip: needs augment.flip horizontal (got {self.flip!r})")
        return self


NO_IMAGENET_WEIGHTS = {"smallnet"}  # built for training from scratch
# backbones with smallnet's options: a patch-whitening stem (model.whiten_stem) that may be frozen
# (model.freeze_stem), identity-initialised block convolutions (model.identity_init) and BatchNorm without a learned
# scale (model.bn_scale)
SMALLNET_INITS = {"smallnet"}
StackMethod = Literal["select", "concat", "pca", "weighted", "mlp"]  # described in embedlab/stack/stacker.py
BackboneName = Literal["densenet121", "resnet50", "vgg16", "xception", "mobilenetv2", "smallnet"]
PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(ge=1)]


class ModelParams(_Section):
    """``model:``: the embedding model around every backbone (weights, embedding size, input size, head scale)."""

    weights: str | None = None  # "imagenet", None (random init) or a path to a .weights.h5 file
    embedding_dim: Annotated[int, Field(ge=2, le=4096)] = 128
    input_size: Annotated[int, Field(ge=16, le=1024)] | None = None
    logit_scale: Annotated[float, Field(gt=0, le=100)] = 1.0  # unit embedding x this before the classifier
    whiten_stem: bool = False  # smallnet: initialise the stem from the training patches' whitening (whitening.py)
    identity_init: bool = False  # smallnet: each block convolution's first filters start as the identity
    bn_scale: bool = True  # smallnet: false = BatchNorm without a learned scale (airbench's; shift only)
    freeze_stem: bool = False  # smallnet: the stem's kernel (e.g. its whitening) does not train; its bias does


class TrainParams(_Section):
    """``train:``: the training recipe every backbone uses unless ``backbones.<name>`` overrides a key."""

    epochs: PositiveInt = 10
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    unfreeze: Literal["all"] | Annotated[int, Field(ge=0)] = "all"
    finetune_factor: Annotated[float, Field(gt=0, le=1)] = 0.1
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: PositiveFloat = 1e-3
    lr_schedule: Literal["constant", "triangular", "cosine"] = "constant"
    lr_warmup: Annotated[float, Field(ge=0, lt=1)] = 0.0  # share of a phase's steps spent rising to train.lr
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    momentum: NonNegativeFraction = 0.9  # sgd: Nesterov momentum
    bn_bias_lr_scale: Annotated[float, Field(ge=1, le=1000)] = 1.0  # sgd: lr multiplier of BatchNorm shifts
    lookahead: bool = False  # weight averaging every 5 steps over the last 70 % of each phase (airbench's)
    dropout: NonNegativeFraction = 0.2
    batch_size: Annotated[int, Field(ge=2)] = 64
    label_smoothing: NonNegativeFraction = 0.1
    patience: PositiveInt = 5
    max_per_class: Annotated[int, Field(ge=1)] | None = None  # training images per class; evaluation stays whole
    bn_recalibration_batches: Annotated[int, Field(ge=0, le=1000)] = 2
    checkpoint_interval: Annotated[float, Field(ge=0)] = 60.0
    loss: Literal["softmax", "triplet", "softmax+triplet"] = "softmax"
    triplet_mining: Literal["batch_hard", "semi_hard"] = "batch_hard"
    triplet_margin: Annotated[float, Field(gt=0, le=2)] = 0.2
    triplet_weight: PositiveFloat = 1.0
    strategy: Literal["auto", "mirrored", "multiworker"] = "auto"
    mixed_precision: AutoOnOff = "auto"
    seed: Annotated[int, Field(ge=0)] = 42

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs: must be < train.epochs ({self.epochs})")
        if self.lr_warmup and self.lr_schedule == "constant":
            raise ValueError("lr_warmup: needs train.lr_schedule triangular or cosine (the constant schedule has none)")
        for key, default in (("momentum", 0.9), ("bn_bias_lr_scale", 1.0)):
            if getattr(self, key) != default and self.optimizer != "sgd":
                raise ValueError(f"{key}: only train.optimizer sgd uses it (got optimizer {self.optimizer!r})")
        return self


class BackboneOverrides(_Section):
    """Per-backbone values that replace ``model.*`` / ``train.*`` for that backbone only."""

    weights: str | None = None
    embedding_dim: Annotated[int, Field(ge=2, le=4096)] | None = None
    input_size: Annotated[int, Field(ge=16, le=1024)] | None = None
    logit_scale: Annotated[float, Field(gt=0, le=100)] | None = None
    whiten_stem: bool | None = None
    identity_init: bool | None = None
    bn_scale: bool | None = None
    freeze_stem: bool | None = None
    epochs: PositiveInt | None = None
    warmup_epochs: Annotated[int, Field(ge=0)] | None = None
    unfreeze: Literal["all"] | Annotated[int, Field(ge=0)] | None = None
    finetune_factor: Annotated[float, Field(gt=0, le=1)] | None = None
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] | None = None
    lr: PositiveFloat | None = None
    lr_schedule: Literal["constant", "triangular", "cosine"] | None = None
    lr_warmup: Annotated[float, Field(ge=0, lt=1)] | None = None
    weight_decay: Annotated[float, Field(ge=0)] | None = None
    momentum: NonNegativeFraction | None = None
    bn_bias_lr_scale: Annotated[float, Field(ge=1, le=1000)] | None = None
    lookahead: bool | None = None
    label_smoothing: NonNegativeFraction | None = None
    dropout: NonNegativeFraction | None = None
    batch_size: Annotated[int, Field(ge=2)] | None = None
    max_per_class: Annotated[int, Field(ge=1)] | None = None
    mixed_precision: AutoOnOff | None = None


class EmbedParams(_Section):
    """``embed:``: how the embed stage (and every query) runs the trained models."""

    flip_average: bool = False  # embed an image and its mirror, average, normalise (queries in `search` too)
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 256


class FaissParams(_Section):
    """The approximate index used when ``evaluate.index`` is ``faiss``."""

    type: Literal["flat", "hnsw", "ivf"] = "hnsw"
    hnsw_m: Annotated[int, Field(ge=4, le=256)] = 32
    ef_construction: Annotated[int, Field(ge=8)] = 200
    ef_search: Annotated[int, Field(ge=8)] = 128
    nlist: Annotated[int, Field(ge=1)] = 256
    nprobe: Annotated[int, Field(ge=1)] = 16


class EvaluateParams(_Section):
    """``evaluate:``: the retrieval evaluation (test queries against ``gallery``)."""

    k: Annotated[int, Field(ge=1, le=1000)] = 5
    k_max: Annotated[int, Field(ge=1, le=1000)] = 20
    metric: Literal["cosine", "euclidean"] = "cosine"
    gallery: Literal["train", "train+val"] = "train"
    examples: Annotated[int, Field(ge=1, le=64)] = 8
    index: Literal["exact", "faiss"] = "exact"
    faiss: FaissParams = FaissParams()
    seed: Annotated[int, Field(ge=0)] = 42


class StackParams(_Section):
    """``stack:``: the stacking ensemble of the backbones' embeddings."""

    method: StackMethod = "select"
    models: list[BackboneName] | None = None  # None: every backbone in ``backbones``
    dim: Annotated[int, Field(ge=2, le=4096)] = 32
    whiten_shrinkage: Annotated[float, Field(ge=0)] = 1.0
    select_k: Annotated[int, Field(ge=1, le=1000)] = 5  # select: the validation mAP@k it maximises
    hidden: Annotated[int, Field(ge=2, le=8192)] = 256
    loss: Literal["softmax", "triplet", "softmax+triplet"] = "softmax+triplet"
    triplet_margin: Annotated[float, Field(gt=0, le=2)] = 0.2
    epochs: PositiveInt = 60
    lr: PositiveFloat = 1e-3
    batch_size: Annotated[int, Field(ge=2)] = 128
    seed: Annotated[int, Field(ge=0)] = 42


class TsneParams(_Section):
    """``cluster.tsne:``: the t-SNE map."""

    perplexity: Annotated[float, Field(ge=2, le=100)] = 30.0
    sample: Annotated[int, Field(ge=10)] = 1000  # points, drawn evenly per class
    seed: Annotated[int, Field(ge=0)] = 42


class ClusterParams(_Section):
    """``cluster:``: K-Means and the 2-D maps of the test split."""

    k: Annotated[int, Field(ge=2)] | None = None  # None: the number of classes
    n_init: PositiveInt = 10
    method: Literal["tsne", "pca", "tsne+pca"] = "tsne"
    tsne: TsneParams = TsneParams()
    seed: Annotated[int, Field(ge=0)] = 42


class ProjectorParams(_Section):
    """``projector:``: the TensorBoard Projector export."""

    max_points: Annotated[int, Field(ge=1, le=100_000)] = 2000  # TensorBoard's sprites struggle beyond ~10k
    thumbnail: Annotated[int, Field(ge=8, le=128)] = 32  # sprite cell side in pixels
    seed: Annotated[int, Field(ge=0)] = 42


class ServeParams(_Section):
    """``embedlab serve`` (no pipeline stage reads these, so changing them reruns nothing)."""

    gallery: Literal["all", "train", "train+val"] = "all"  # the splits a query ranks (all: as ``embedlab search``)
    k: Annotated[int, Field(ge=1, le=1000)] = 8  # results per model when a request does not say
    max_k: Annotated[int, Field(ge=1, le=1000)] = 100
    max_upload_mb: Annotated[float, Field(gt=0, le=1024)] = 10.0
    max_image_pixels: Annotated[int, Field(ge=1)] = 40_000_000  # decoded size: refuses decompression bombs
    max_pending: Annotated[int, Field(ge=1)] = 256  # queries inside the server at once; more get 429
    max_batch: Annotated[int, Field(ge=1, le=4096)] = 64  # uploads embedded together when they arrive together
    thumbnail: Annotated[int, Field(ge=16, le=512)] = 96  # side of /api/thumbnails images, pixels

    @model_validator(mode="after")
    def _check(self) -> ServeParams:
        if self.k > self.max_k:  # else every request that does not name its k would be refused
            raise ValueError(f"k: must be <= serve.max_k ({self.max_k}) (got {self.k})")
        return self
