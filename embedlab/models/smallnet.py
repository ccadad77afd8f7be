"""smallnet: a network for small images trained from scratch, its recipe constants, and its initialisation options.

The build (:func:`build_smallnet`, its block ``model.widths``) follows the airbench family (K. Jordan, 2024). Its
initialisation options (``model.whiten_stem``, ``identity_init``, ``freeze_stem``, ``bn_scale``) are applied by
:func:`apply_init_options`; the params validation refuses these and ``widths`` for backbones whose registry entry has
no ``smallnet_options``.

Patch whitening (``model.whiten_stem``): the stem is a 2×2 convolution at full resolution. Initialised from the
data instead of at random, its filters are the eigenvectors of the covariance of the training images' 2×2 patches
(12 values each), scaled by 1/√(eigenvalue + ε), in both signs: so its outputs start decorrelated and of equal
variance, and the blocks above learn from the first step on inputs that are already whitened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import numpy as np

from embedlab.core.backbones import SMALLNET_WIDTHS
from embedlab.models.devices import init_seed

if TYPE_CHECKING:
    from embedlab.core.params import ModelParams

# smallnet's recipe, in one block (airbench94's choices; docs/cifar10.md measures what each buys).
STEM_KERNEL = 2  # the stem sees 2x2 patches at full resolution
STEM_WIDTH = 2 * STEM_KERNEL**2 * 3  # 24: room for each of the 12 patch eigenvectors of an RGB patch, in both signs
BN_EPSILON = 1e-5  # PyTorch's default, which airbench's recipe was tuned with (Keras' default is 1e-3)
# Added to every eigenvalue before the inverse square root: the smallest eigenvalues of natural-image patches are
# near 0, and without it their filters would blow noise up without bound (airbench's value, in [-1, 1] pixel units).
WHITENING_EPS = 5e-4
# Patches are drawn from this many training images: ~4.6 million 2×2 patches at 32 px, plenty for a 12×12
# covariance, and a second of work.
WHITENING_IMAGES = 5000


def build_smallnet(
    side: int, *, seed: int, widths: tuple[int, ...] = SMALLNET_WIDTHS, bn_scale: bool = True
) -> keras.Model:
    """A network shaped for small images, after the airbench family (K. Jordan, "94% on CIFAR-10 in 3.29 seconds on
    a single GPU", 2024): a 2x2 stem convolution at full resolution, then per width one block of conv -> max-pool
    -> BatchNorm -> GELU -> conv -> BatchNorm -> GELU, and a global max pool.

    Why: ImageNet backbones spend most of their depth below 8x8 pixels on a 32 px input; this one keeps its
    compute at 16x16 and 8x8, where small images carry their information. Three 2x downsamplings suit 32-64 px
    inputs; each block halves the side, so the input must be at least 2 ** len(widths) + 1 pixels.
    ``bn_scale=False`` (``model.bn_scale``) drops BatchNorm's learned scale, as airbench does: each normalised
    output keeps unit variance and only its shift learns.
    """
    inputs = keras.Input((side, side, 3), name="pixels")

    def conv(width: int, kernel: int, name: str, padding: str = "same", bias: bool = False):
        # Seeded He init: the same train.seed gives the same first weights in every process, another seed others.
        init = keras.initializers.HeNormal(seed=init_seed(seed, len(names)))
        names.append(name)
        return keras.layers.Conv2D(width, kernel, padding=padding, use_bias=bias, kernel_initializer=init, name=name)

    names: list[str] = []
    x = conv(STEM_WIDTH, STEM_KERNEL, "stem_conv", padding="valid", bias=True)(inputs)
    x = keras.layers.Activation("gelu", name="stem_gelu")(x)
    for b, width in enumerate(widths, start=1):
        x = conv(width, 3, f"block{b}_conv1")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
        x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, scale=bn_scale, name=f"block{b}_bn1")(x)
        x = keras.layers.Activation("gelu", name=f"block{b}_gelu1")(x)
        x = conv(width, 3, f"block{b}_conv2")(x)
        x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, scale=bn_scale, name=f"block{b}_bn2")(x)
        x = keras.layers.Activation("gelu", name=f"block{b}_gelu2")(x)
    x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return keras.Model(inputs, x, name="smallnet")


def identity_init(backbone: keras.Model) -> None:
    """airbench's partial Dirac initialisation (``model.identity_init``): in every 3x3 block convolution of
    smallnet the first ``min(in, out)`` filters start as the identity, passing their input channel through; the
    others keep their He init. The deep network then starts as a near copy of its stem's features, so the first
    steps train every layer instead of pushing noise through random ones."""
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.name.startswith("block"):
            kernel = np.array(layer.kernel)
            centre, count = kernel.shape[0] // 2, min(kernel.shape[2], kernel.shape[3])
            kernel[:, :, :, :count] = 0.0
            kernel[centre, centre, np.arange(count), np.arange(count)] = 1.0
            layer.kernel.assign(kernel)


def patch_whitening_kernel(pixels: np.ndarray, kernel: int = 2, eps: float = WHITENING_EPS) -> np.ndarray:
    """The ``(kernel, kernel, channels, 2·kernel²·channels)`` kernel that whitens the patches of ``pixels``
    (float, ``(n, side, side, channels)``, already as the stem sees them): eigenvectors of the patch covariance over
    √(eigenvalue + eps), largest first, then the same filters negated."""
    channels = pixels.shape[-1]
    windows = np.lib.stride_tricks.sliding_window_view(pixels, (kernel, kernel), axis=(1, 2))
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, kernel * kernel * channels).astype(np.float64)
    patches -= patches.mean(0)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    filters = eigenvectors[:, ::-1] / np.sqrt(eigenvalues[::-1] + eps)
    filters = np.concatenate([filters, -filters], axis=1)
    return filters.reshape(kernel, kernel, channels, -1).astype(np.float32)


def whiten_stem(embedding_model, backbone, images: np.ndarray, seed: int) -> None:
    """Set smallnet's ``stem_conv`` kernel to whiten a seeded sample of the training ``images`` (uint8) and its bias
    to 0. The sample goes through the embedding model's own layers before the backbone (cast, resize, preprocess),
    so the statistics are those of what the stem sees."""
    rng = np.random.default_rng(seed)
    sample = images[np.sort(rng.choice(len(images), min(WHITENING_IMAGES, len(images)), replace=False))]
    x = np.asarray(sample)
    for layer in embedding_model.layers[1:]:  # after the input, up to the backbone
        if layer is backbone:
            break
        x = layer(x)
    stem = backbone.get_layer("stem_conv")
    stem.kernel.assign(patch_whitening_kernel(np.asarray(x, np.float32), kernel=stem.kernel.shape[0]))
    stem.bias.assign(np.zeros(stem.bias.shape, np.float32))


def apply_init_options(models, model_params: ModelParams, train_images: np.ndarray, seed: int) -> None:
    """smallnet's initialisation params on freshly built models: the patch-whitening stem (``model.whiten_stem``),
    identity-initialised blocks (``model.identity_init``) and a stem kernel that does not train
    (``model.freeze_stem``). Params validation has already refused them for any other backbone."""
    if model_params.whiten_stem:
        whiten_stem(models.embedding, models.backbone, train_images, seed=seed)
    if model_params.identity_init:
        identity_init(models.backbone)
    if model_params.freeze_stem:
        # airbench's frozen whitening: trained and decayed, its filters lost 13x their norm in a 10-epoch CIFAR-10
        # run, though freezing them did not change that run's accuracy (results/cifar10-airbench/README.md)
        models.backbone.get_layer("stem_conv").kernel.trainable = False
