"""Typed, validated view of ``params.yaml``.

Every stage loads the whole file through :func:`load_params` before doing any work, so a typo anywhere stops the
pipeline at once with one line naming the key and what it accepts. Stages then read only their own section; DVC
tracks exactly those keys (see ``dvc.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from embedlab.errors import UserError

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
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataParams(_Section):
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
    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"] = "none"
    rotation: Annotated[float, Field(ge=0, le=0.5)] = 0.0
    zoom: NonNegativeFraction = 0.0
    shift: NonNegativeFraction = 0.0
    shear: NonNegativeFraction = 0.0
    contrast: NonNegativeFraction = 0.0


NO_IMAGENET_WEIGHTS = {"smallnet"}  # built for training from scratch
BackboneName = Literal["densenet121", "resnet50", "vgg16", "xception", "mobilenetv2", "smallnet"]
PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(ge=1)]


class ModelParams(_Section):
    weights: str | None = None  # "imagenet", None (random init) or a path to a .weights.h5 file
    embedding_dim: Annotated[int, Field(ge=2, le=4096)] = 128
    input_size: Annotated[int, Field(ge=16, le=1024)] | None = None
    logit_scale: Annotated[float, Field(gt=0, le=100)] = 1.0  # unit embedding x this before the classifier


class TrainParams(_Section):
    epochs: PositiveInt = 10
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    unfreeze: Literal["all"] | Annotated[int, Field(ge=0)] = "all"
    finetune_factor: Annotated[float, Field(gt=0, le=1)] = 0.1
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: PositiveFloat = 1e-3
    lr_schedule: Literal["constant", "triangular", "cosine"] = "constant"
    lr_warmup: Annotated[float, Field(ge=0, lt=1)] = 0.0  # share of a phase's steps spent rising to train.lr
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    dropout: NonNegativeFraction = 0.2
    batch_size: Annotated[int, Field(ge=2)] = 64
    label_smoothing: NonNegativeFraction = 0.1
    patience: PositiveInt = 5
    max_per_class: Annotated[int, Field(ge=1)] | None = None  # training images per class; evaluation stays whole
    bn_recalibration_batches: Annotated[int, Field(ge=0, le=1000)] = 4
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
        return self


class BackboneOverrides(_Section):
    """Per-backbone values that replace ``model.*`` / ``train.*`` for that backbone only."""

    weights: str | None = None
    embedding_dim: Annotated[int, Field(ge=2, le=4096)] | None = None
    input_size: Annotated[int, Field(ge=16, le=1024)] | None = None
    logit_scale: Annotated[float, Field(gt=0, le=100)] | None = None
    epochs: PositiveInt | None = None
    warmup_epochs: Annotated[int, Field(ge=0)] | None = None
    unfreeze: Literal["all"] | Annotated[int, Field(ge=0)] | None = None
    finetune_factor: Annotated[float, Field(gt=0, le=1)] | None = None
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] | None = None
    lr: PositiveFloat | None = None
    lr_schedule: Literal["constant", "triangular", "cosine"] | None = None
    lr_warmup: Annotated[float, Field(ge=0, lt=1)] | None = None
    weight_decay: Annotated[float, Field(ge=0)] | None = None
    label_smoothing: NonNegativeFraction | None = None
    dropout: NonNegativeFraction | None = None
    batch_size: Annotated[int, Field(ge=2)] | None = None
    max_per_class: Annotated[int, Field(ge=1)] | None = None
    mixed_precision: AutoOnOff | None = None


class EmbedParams(_Section):
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
    k: Annotated[int, Field(ge=1, le=1000)] = 5
    k_max: Annotated[int, Field(ge=1, le=1000)] = 20
    metric: Literal["cosine", "euclidean"] = "cosine"
    gallery: Literal["train", "train+val"] = "train"
    examples: Annotated[int, Field(ge=1, le=64)] = 8
    index: Literal["exact", "faiss"] = "exact"
    faiss: FaissParams = FaissParams()
    seed: Annotated[int, Field(ge=0)] = 42


class StackParams(_Section):
    method: Literal["select", "concat", "pca", "weighted", "mlp"] = "select"
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
    perplexity: Annotated[float, Field(ge=2, le=100)] = 30.0
    sample: Annotated[int, Field(ge=10)] = 1000  # points, drawn evenly per class
    seed: Annotated[int, Field(ge=0)] = 42


class ClusterParams(_Section):
    k: Annotated[int, Field(ge=2)] | None = None  # None: the number of classes
    n_init: PositiveInt = 10
    method: Literal["tsne", "pca", "tsne+pca"] = "tsne"
    tsne: TsneParams = TsneParams()
    seed: Annotated[int, Field(ge=0)] = 42


class ProjectorParams(_Section):
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


class Params(_Section):
    data: DataParams = DataParams()
    augment: AugmentParams = AugmentParams()
    backbones: dict[BackboneName, BackboneOverrides | None] = Field(
        default_factory=lambda: {"densenet121": None, "resnet50": None, "vgg16": None}, min_length=1
    )
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    embed: EmbedParams = EmbedParams()
    evaluate: EvaluateParams = EvaluateParams()
    stack: StackParams = StackParams()
    cluster: ClusterParams = ClusterParams()
    projector: ProjectorParams = ProjectorParams()
    serve: ServeParams = ServeParams()

    @model_validator(mode="after")
    def _check_overrides(self) -> Params:
        for name in self.backbones:  # an override that breaks a cross-key rule fails here, before any stage works
            self.for_backbone(name)
        for name in self.stack.models or []:
            if name not in self.backbones:
                raise ValueError(f"stack.models: {name!r} is not in backbones ({', '.join(self.backbones)})")
        return self

    @property
    def stacked_backbones(self) -> list[str]:
        """The backbones the stack combines, in ``backbones`` order."""
        chosen = self.stack.models or list(self.backbones)
        return [name for name in self.backbones if name in chosen]

    @property
    def model_names(self) -> list[str]:
        """Every model evaluate and cluster report: the backbones, then ``stack``."""
        return [*self.backbones, "stack"]

    def for_backbone(self, name: str) -> tuple[ModelParams, TrainParams]:
        """``model`` and ``train`` with this backbone's overrides applied (and validated again)."""
        if name not in self.backbones:
            raise ParamsError(f"params.yaml: backbones: {name!r} is not listed (listed: {', '.join(self.backbones)})")
        overrides = (self.backbones[name] or BackboneOverrides()).model_dump(exclude_unset=True)
        model_keys = set(ModelParams.model_fields)
        try:
            model = ModelParams.model_validate(
                {**self.model.model_dump(), **{k: v for k, v in overrides.items() if k in model_keys}}
            )
            train = TrainParams.model_validate(
                {**self.train.model_dump(), **{k: v for k, v in overrides.items() if k not in model_keys}}
            )
        except ValidationError as err:
            raise ParamsError(_format_error(err, prefix=f"backbones.{name}")) from None
        if name in NO_IMAGENET_WEIGHTS and model.weights == "imagenet":
            where = "backbones.{name}.weights" if "weights" in overrides else "model.weights"
            raise ParamsError(
                f"params.yaml: {where.format(name=name)}: {name} has no ImageNet weights; use null (random init) "
                "or a .weights.h5 path"
            )
        return model, train


def _format_error(err: ValidationError, prefix: str = "") -> str:
    first = err.errors()[0]
    loc = ".".join([prefix, *(str(part) for part in first["loc"])] if prefix else [str(p) for p in first["loc"]])
    msg = first["msg"]
    if msg.startswith("Value error, "):
        # Cross-field checks put the key first: "path: required when ...".
        key, _, rest = msg.removeprefix("Value error, ").partition(": ")
        loc, msg = ".".join(filter(None, [loc, key])), rest
    elif first["loc"][-1] == "[key]":
        loc = loc.removesuffix(".[key]")
        msg = msg.replace("Input should be", "unknown name; allowed:") + f" (got {first['input']!r})"
    elif first["type"] == "extra_forbidden":
        msg = f"unknown key; allowed keys: {', '.join(_allowed_keys(first['loc']))}"
    else:
        got = first.get("input")
        msg = f"{msg} (got {got!r})"
    more = len(err.errors()) - 1
    return f"params.yaml: {loc}: {msg}" + (f" [+{more} more]" if more else "")


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    if loc[0] == "backbones":
        return list(BackboneOverrides.model_fields)
    model: type[BaseModel] = Params
    for part in loc[:-1]:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return list(model.model_fields)


def parse_params(raw: dict[str, Any] | None) -> Params:
    """Validate a params mapping; raise :class:`ParamsError` with one line naming the bad key."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError(_format_error(err)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the repository root)") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw)
