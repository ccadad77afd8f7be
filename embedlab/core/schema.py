"""The sections of ``params.yaml`` as typed, validated models: each field's type is what the key accepts.

:mod:`embedlab.core.params` assembles them into :class:`~embedlab.core.params.Params` and turns a validation error
line naming the key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model, model_validator

from embedlab.core.backbones import SMALLNET_WIDTHS, BackboneName
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

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)


class DataParams(_Section):
    """``data:``: the dataset source and how images become ``data/prepared`` (size, fit, splits)."""

    source: Literal["digits", "cifar10", "folder"] = "digits"
    """`digits` (bundled, offline), `cifar10` (official binary archive), `folder` (your images)"""
    url: str = CIFAR10_URL
    """where `cifar10` downloads `cifar-10-binary.tar.gz` from (any mirror)"""
    path: str | None = None
    """`cifar10`: a local `cifar-10-binary.tar.gz` instead of downloading; `folder`: a directory or
    `.tar`/`.tar.gz`/`.zip`"""
    image_size: Annotated[int, Field(ge=8, le=1024)] = 32
    """side of the square images in `data/prepared` (8–1024)"""
    fit: Literal["crop", "pad", "stretch"] = "crop"
    """non-square images: `crop` (centre), `pad` (letterbox) or `stretch`"""
    val_fraction: Fraction = 0.15
    """share of each class's training images held out for validation, in (0, 1)"""
    test_fraction: Fraction = 0.3
    """share of each class used for test when the source has no official test split, in (0, 1)"""
    max_per_class: Annotated[int, Field(ge=2)] | None = None
    """cap images per class and source split (quick experiments)"""
    seed: Annotated[int, Field(ge=0)] = 42
    """seed of the split and sub-sampling"""

    @model_validator(mode="after")
    def _check(self) -> DataParams:
        if self.source == "folder" and not self.path:
            raise ValueError("path: required when data.source is folder (a directory or .tar/.tar.gz/.zip)")
        return self


class AugmentParams(_Section):
    """``augment:``: on-the-fly training augmentation, each kind off at 0 / none."""

    flip: Literal["none", "horizontal", "vertical", "horizontal_and_vertical"] = "none"
    """`none`, `horizontal`, `vertical`, `horizontal_and_vertical` (digits must not be flipped; use `horizontal` for
    CIFAR-10)"""
    rotation: Annotated[float, Field(ge=0, le=0.5)] = 0.0
    """max rotation, fraction of a full turn"""
    zoom: NonNegativeFraction = 0.0
    """max zoom in/out"""
    shift: NonNegativeFraction = 0.0
    """max translation, fraction of width/height"""
    shear: NonNegativeFraction = 0.0
    """max shear"""
    contrast: NonNegativeFraction = 0.0
    """max contrast change"""
    # bilinear: sub-pixel shifts (resampled, slightly blurred); nearest: whole-pixel shifts, as a random crop of a
    # reflect-padded image (airbench's translation)
    shift_interpolation: Literal["bilinear", "nearest"] = "bilinear"
    """`bilinear`: sub-pixel shifts, resampled (slightly blurred); `nearest`: whole-pixel shifts, a random crop of the
    mirror-padded image, as airbench translates"""
    # airbench's derandomised flip: each image mirrored (or not) by a seeded coin in epoch 0, all flipped the other
    # way every odd epoch, so consecutive epochs always show both sides
    alternate_flip: bool = False
    """with `flip: horizontal`: airbench's derandomised flip. A seeded coin mirrors each image in epoch 0, and every odd
    epoch shows all of them the other way, so any two consecutive epochs show both sides of every image (a random flip
    repeats one side for a quarter of the images)"""

    @model_validator(mode="after")
    def _check(self) -> AugmentParams:
        if self.alternate_flip and self.flip != "horizontal":
            raise ValueError(f"alternate_flip: needs augment.flip horizontal (got {self.flip!r})")
        return self


StackMethod = Literal["select", "concat", "pca", "weighted", "mlp"]  # described in embedlab/stack/stacker.py
PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(ge=1)]


class ModelParams(_Section):
    """``model:``: the embedding model around every backbone (weights, embedding size, input size, head scale)."""

    weights: str | None = None
    """`imagenet` (Keras' download; offline it stops naming the file and the folder to put it in), `null` (random init)
    or a path to a `.weights.h5` saved by this pipeline (`models/<bb>.weights.h5`)"""
    embedding_dim: Annotated[int, Field(ge=2, le=4096)] | None = 128
    """embedding size: a dense projection of the backbone's pooled features, unit length, under the classifier. `null`:
    no projection; the embedding is the pooled features at unit length and the classifier reads the features as they
    are (airbench's head, with `logit_scale: 0.111`)"""
    input_size: Annotated[int, Field(ge=16, le=1024)] | None = None
    """the backbone's input side; images are resized inside the model (Xception needs ≥ 71 px and gets it
    automatically)"""
    logit_scale: Annotated[float, Field(gt=0, le=100)] = 1.0
    """the classifier's input (the unit embedding, or the features with `embedding_dim: null`) is multiplied by this
    (a normalised-softmax head when > 1; with `head: cosine`, the inverse temperature of the cosine logits)"""
    head: Literal["linear", "cosine"] = "linear"
    """the softmax classifier on the unit embedding (on the features with `embedding_dim: null`): `linear` (a dense
    layer with bias) or `cosine` (logits = `logit_scale` × the cosine between its input and each class's unit weight
    vector: the classifier then separates classes by angle, the geometry cosine retrieval ranks by)"""
    whiten_stem: bool = False
    """smallnet only: initialise its 2×2 stem from the training images, as the whitening of their 2×2 patches
    (airbench's patch whitening; see [the ablation](../benchmarks/README.md#what-each-recipe-choice-buys-an-ablation)).
    Set it under `backbones.smallnet`; on another backbone it is an error naming the key"""
    identity_init: bool = False
    """smallnet only: each 3×3 block convolution's first filters (as many as it has input channels) start as the
    identity and pass their input through; the rest keep their random init (airbench's partial Dirac init; see [the
    ablation](../benchmarks/README.md#what-each-recipe-choice-buys-an-ablation)). Set it under `backbones.smallnet`; on
    another backbone it is an error naming the key"""
    bn_scale: bool = True
    """smallnet only: `false` drops BatchNorm's learned scale, as airbench does (each normalised unit keeps unit
    variance; only its shift learns; pair it with `train.bn_bias_lr_scale`). Set it under `backbones.smallnet`"""
    widths: Annotated[list[Annotated[int, Field(ge=8, le=1024)]], Field(min_length=3, max_length=3)] = list(
        SMALLNET_WIDTHS
    )
    """smallnet only: the channels of its three blocks. airbench95 widens airbench94's `[64, 256, 256]` to `[128, 384,
    384]`; a block's compute grows with the square of its width. Set it under `backbones.smallnet`"""
    freeze_stem: bool = False
    """smallnet only: its 2×2 stem's kernel does not train (its bias does): with `whiten_stem`, airbench's frozen
    whitening. Trained, and decayed by weight decay, the whitened filters lost 13× their norm in a 10-epoch CIFAR-10
    run. Set it under `backbones.smallnet`"""


# The model.* keys that only a backbone with ``smallnet_options`` in its registry entry (embedlab.core.backbones)
# accepts at a value other than the default, and what the others lack.
SMALLNET_OPTIONS = {
    "widths": "block widths",
    "whiten_stem": "whitening stem",
    "identity_init": "identity-initialised blocks",
    "bn_scale": "BatchNorm scale option",
    "freeze_stem": "stem to freeze",
}


class TrainParams(_Section):
    """``train:``: the training recipe every backbone uses unless ``backbones.<name>`` overrides a key."""

    epochs: PositiveInt = 10
    """total epochs, warm-up included"""
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    """phase 1: the backbone frozen, only the head trains (use with pretrained weights)"""
    unfreeze: Literal["all"] | Annotated[int, Field(ge=0)] = "all"
    """phase 2: `all`, or the number of top backbone layers to train"""
    finetune_factor: Annotated[float, Field(gt=0, le=1)] = 0.1
    """phase 2 learning rate = `lr × finetune_factor` (when there was a warm-up)"""
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    """`adam`, `adamw`, `sgd` (Nesterov, `momentum`), `rmsprop`"""
    lr: PositiveFloat = 1e-3
    """learning rate (the peak, with a schedule)"""
    lr_schedule: Literal["constant", "triangular", "cosine"] = "constant"
    """`constant`, `triangular` (linear rise, then linear fall to 0) or `cosine` (linear rise, half-cosine fall to 0),
    per phase and per step; the optimizer's step counter is in every checkpoint, so a resumed run continues on the same
    curve"""
    lr_warmup: Annotated[float, Field(ge=0, lt=1)] = 0.0
    """share of the phase's steps spent rising from `lr/10` to `lr` (needs a schedule)"""
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    """decoupled weight decay, as given, for every optimizer (`adamw` with 0 has none)"""
    momentum: NonNegativeFraction = 0.9
    """`sgd` only: Nesterov momentum, in [0, 1)"""
    bn_bias_lr_scale: Annotated[float, Field(ge=1, le=1000)] = 1.0
    """`sgd` only: the BatchNorm shifts step this many times the lr (airbench's 64 with `model.bn_scale: false`); weight
    decay is not scaled"""
    lookahead: bool = False
    """airbench's weight averaging: from 30 % of each phase's steps on, every 5 steps an average moves towards the
    weights by 1 − ρ and the weights are reset to it, ρ = 0.95⁵ · (step/total)³; each epoch ends on the average, so a
    checkpoint holds the whole state"""
    dropout: NonNegativeFraction = 0.2
    """dropout before the embedding projection (a regulariser, so it sits with the other training knobs)"""
    batch_size: Annotated[int, Field(ge=2)] = 64
    """global batch size"""
    label_smoothing: NonNegativeFraction = 0.1
    """for the softmax loss"""
    patience: PositiveInt = 5
    """early stopping on validation loss; the best epoch's weights are kept"""
    max_per_class: Annotated[int, Field(ge=1)] | None = None
    """the training budget: at most this many images per class, a seeded class-balanced draw from the train split;
    validation, test, the gallery and every evaluation stay whole (unlike `data.max_per_class`)"""
    bn_recalibration_batches: Annotated[int, Field(ge=0, le=1000)] = 2
    """training batches whose BatchNorm statistics are averaged before each validation (`0` = off; see below)"""
    checkpoint_interval: Annotated[float, Field(ge=0)] = 60.0
    """seconds between resume checkpoints (`0` = after every epoch); a resume replays the epochs since"""
    loss: Literal["softmax", "triplet", "supcon", "softmax+triplet", "softmax+supcon"] = "softmax"
    """`softmax`, a metric loss on the embedding (`triplet`, or `supcon`: supervised contrastive), or softmax plus
    one; with a metric loss every batch holds P classes × K ≥ 2 images"""
    triplet_mining: Literal["batch_hard", "semi_hard"] = "batch_hard"
    """`batch_hard` or `semi_hard`"""
    triplet_margin: Annotated[float, Field(gt=0, le=2)] = 0.2
    """margin on cosine distance"""
    triplet_weight: PositiveFloat = 1.0
    """weight of the triplet term in `softmax+triplet`"""
    supcon_temperature: Annotated[float, Field(gt=0, le=1)] = 0.1
    """temperature of the supervised contrastive loss (lower: harder negatives count more)"""
    supcon_weight: PositiveFloat = 1.0
    """weight of the supervised contrastive term in `softmax+supcon`"""
    strategy: Literal["auto", "mirrored", "multiworker"] = "auto"
    """`auto` (all local GPUs when there are several), `mirrored`, `multiworker` (`TF_CONFIG`)"""
    mixed_precision: AutoOnOff = "auto"
    """`auto` (on with a GPU only: on AVX512_BF16 CPUs bfloat16 speeds some backbones and slows or degrades others,
    so turn it on per backbone; see [performance](performance.md)), `on` (float16 on a GPU, bfloat16 on a CPU), `off`"""
    seed: Annotated[int, Field(ge=0)] = 42
    """seeds Python, NumPy, TensorFlow, the batch order and every random layer"""

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs: must be < train.epochs ({self.epochs})")
        if self.lr_warmup and self.lr_schedule == "constant":
            raise ValueError("lr_warmup: needs train.lr_schedule triangular or cosine (the constant schedule has none)")
        for key in ("momentum", "bn_bias_lr_scale"):
            if getattr(self, key) != TrainParams.model_fields[key].default and self.optimizer != "sgd":
                raise ValueError(f"{key}: only train.optimizer sgd uses it (got optimizer {self.optimizer!r})")
        return self

    @property
    def embedding_loss(self) -> str | None:
        """The metric loss on the embedding (`triplet` or `supcon`), None when softmax trains it alone."""
        return self.loss.removeprefix("softmax").removeprefix("+") or None


def _overrides_of(*sections: type[_Section]) -> type[_Section]:
    """The ``backbones.<name>`` model: every key of ``sections``, optional, with the same type and limits (so a
    new ``model.*`` or ``train.*`` key can be overridden per backbone with no second declaration)."""
    fields: dict[str, Any] = {}
    for section in sections:
        for name, info in section.model_fields.items():
            annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            fields[name] = (annotation | None, Field(None, description=info.description))
    model = create_model("BackboneOverrides", __base__=_Section, **fields)
    model.__doc__ = "Per-backbone values that replace ``model.*`` / ``train.*`` for that backbone only."
    return model


BackboneOverrides = _overrides_of(ModelParams, TrainParams)


class EmbedParams(_Section):
    """``embed:``: how the embed stage (and every query) runs the trained models."""

    flip_average: bool = False
    """embed each image and its left-right mirror, average, L2-normalise; `embedlab search` embeds queries the same way.
    Off for digits (a mirrored digit is another symbol), on in the CIFAR-10 recipe ([CIFAR-10](cifar10.md))"""
    translate_average: bool = False
    """also average each view shifted one pixel up-left and one down-right (reflect-padded), at half the weight:
    airbench's level-2 test-time augmentation, for models trained with `augment.shift`
    ([retrieval](retrieval.md#test-time-augmentation))"""
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 256
    """images per forward pass (fewer above 64 px: at most 256 × 64 × 64 pixels a pass)"""


class FaissParams(_Section):
    """The approximate index used when ``evaluate.index`` is ``faiss``."""

    type: Literal["flat", "hnsw", "ivf"] = "hnsw"
    """`flat` (exact, same neighbours as `exact`), `hnsw` or `ivf`"""
    hnsw_m: Annotated[int, Field(ge=4, le=256)] = 32
    """hnsw: graph degree"""
    ef_construction: Annotated[int, Field(ge=8)] = 200
    """hnsw: build-time beam width"""
    ef_search: Annotated[int, Field(ge=8)] = 128
    """hnsw: query-time beam width (raised to k when smaller)"""
    nlist: Annotated[int, Field(ge=1)] = 256
    """ivf: number of lists (capped at gallery size / 39)"""
    nprobe: Annotated[int, Field(ge=1)] = 16
    """ivf: lists searched per query"""


class EvaluateParams(_Section):
    """``evaluate:``: the retrieval evaluation (test queries against ``gallery``)."""

    k: Annotated[int, Field(ge=1, le=1000)] = 5
    """cut-off of mAP@k, precision@k, hit rate@k and the kNN vote"""
    k_max: Annotated[int, Field(ge=1, le=1000)] = 20
    """the mAP@k curve runs k = 1 … k_max"""
    metric: Literal["cosine", "euclidean"] = "cosine"
    """`cosine` or `euclidean`"""
    gallery: Literal["train", "train+val"] = "train"
    """`train` or `train+val`; queries are the test split"""
    examples: Annotated[int, Field(ge=1, le=64)] = 8
    """seeded queries drawn in the example collages"""
    index: Literal["exact", "faiss"] = "exact"
    """`exact` (chunked matrix products) or `faiss` (`faiss-cpu`, for large galleries; `hnsw` and `ivf` are searched
    `k_max` deep, so without MAP@R and R-precision)"""
    faiss: FaissParams = FaissParams()
    """the approximate index used when evaluate.index is faiss"""
    query_expansion: Annotated[int, Field(ge=0, le=1000)] = 0
    """search twice: each query averaged with its top n results, then searched again (`0` = once); `embedlab search`
    and `serve` rank the same way ([query expansion](retrieval.md#query-expansion))"""
    seed: Annotated[int, Field(ge=0)] = 42
    """seed of the example queries and the linear probe"""


class StackParams(_Section):
    """``stack:``: the stacking ensemble of the backbones' embeddings."""

    method: StackMethod = "select"
    """`select`, `concat`, `pca`, `weighted` or `mlp` ([stacking](retrieval.md#stacking))"""
    models: list[BackboneName] | None = None
    """backbones to combine; `null` = all of `backbones`"""
    dim: Annotated[int, Field(ge=2, le=4096)] = 32
    """output size of `pca` and `mlp` (`pca` is capped at validation images − 1)"""
    whiten_shrinkage: Annotated[float, Field(ge=0)] = 1.0
    """`pca`: adds s × mean variance to every component before whitening"""
    select_k: Annotated[int, Field(ge=1, le=1000)] = 5
    """`select`: the validation mAP@k it maximises"""
    hidden: Annotated[int, Field(ge=2, le=8192)] = 256
    """`mlp` hidden units"""
    loss: Literal["softmax", "triplet", "softmax+triplet"] = "softmax+triplet"
    """weighted, mlp: softmax | triplet | softmax+triplet"""
    triplet_margin: Annotated[float, Field(gt=0, le=2)] = 0.2
    """weighted, mlp: triplet margin on cosine distance"""
    triplet_mining: Literal["batch_hard", "semi_hard"] = "batch_hard"
    """weighted, mlp: which triplets of a batch the triplet loss uses"""
    logit_scale: Annotated[float, Field(gt=0, le=100)] = 16.0
    """weighted, mlp: the unit embedding × this before the softmax head (its own, not model.logit_scale: the stack
    trains a new head on validation embeddings, and reading model.* would rerun it on every backbone change)"""
    epochs: PositiveInt = 60
    """weighted, mlp"""
    lr: PositiveFloat = 1e-3
    """weighted, mlp: Adam learning rate"""
    batch_size: Annotated[int, Field(ge=2)] = 128
    """weighted, mlp: validation embeddings per step"""
    seed: Annotated[int, Field(ge=0)] = 42
    """weighted, mlp: initial weights and batch order; the stack's linear probe"""


class TsneParams(_Section):
    """``cluster.tsne:``: the t-SNE map."""

    perplexity: Annotated[float, Field(ge=2, le=100)] = 30.0
    """t-SNE perplexity"""
    sample: Annotated[int, Field(ge=10)] = 1000
    """points drawn evenly per class (all when fewer)"""
    seed: Annotated[int, Field(ge=0)] = 42
    """t-SNE initialisation and the sample drawn"""


class ClusterParams(_Section):
    """``cluster:``: K-Means and the 2-D maps of the test split."""

    k: Annotated[int, Field(ge=2)] | None = None
    """K-Means clusters; `null` = number of classes"""
    n_init: PositiveInt = 10
    """K-Means restarts (seeded by `cluster.seed`)"""
    method: Literal["tsne", "pca", "tsne+pca"] = "tsne"
    """`tsne`, `pca` or `tsne+pca`: which 2-D maps to draw"""
    tsne: TsneParams = TsneParams()
    """the t-SNE map"""
    seed: Annotated[int, Field(ge=0)] = 42
    """K-Means initialisation"""


class ProjectorParams(_Section):
    """``projector:``: the TensorBoard Projector export."""

    max_points: Annotated[int, Field(ge=1, le=100_000)] = 2000
    """points per model in the TensorBoard projector (drawn evenly per class)"""
    thumbnail: Annotated[int, Field(ge=8, le=128)] = 32
    """sprite thumbnail side in pixels"""
    seed: Annotated[int, Field(ge=0)] = 42
    """the points drawn per class"""


class ServeParams(_Section):
    """``embedlab serve`` (no pipeline stage reads these, so changing them reruns nothing)."""

    gallery: Literal["all", "train", "train+val"] = "all"
    """the images a query ranks: `all` (as `embedlab search`), `train`, or `train+val` (as `evaluate`; the CIFAR-10
    recipe sets it: 50,000 images)"""
    k: Annotated[int, Field(ge=1, le=1000)] = 8
    """results per model when a request does not say"""
    max_k: Annotated[int, Field(ge=1, le=1000)] = 100
    """largest k a request may ask for"""
    max_upload_mb: Annotated[float, Field(gt=0, le=1024)] = 10.0
    """larger uploads get 413"""
    max_image_pixels: Annotated[int, Field(ge=1)] = 40_000_000
    """larger decoded images get 413"""
    max_pending: Annotated[int, Field(ge=1)] = 256
    """queries inside the server at once; the next gets 429"""
    max_batch: Annotated[int, Field(ge=1, le=4096)] = 64
    """the most uploads embedded together"""
    thumbnail: Annotated[int, Field(ge=16, le=512)] = 96
    """side of `/api/thumbnails` images, pixels"""

    @model_validator(mode="after")
    def _check(self) -> ServeParams:
        if self.k > self.max_k:  # else every request that does not name its k would be refused
            raise ValueError(f"k: must be <= serve.max_k ({self.max_k}) (got {self.k})")
        return self
