"""Patch-whitening initialisation of smallnet's stem (``model.whiten_stem``), after airbench (K. Jordan, 2024).

The stem is a 2×2 convolution with 24 filters at full resolution. Initialised from the data instead of at random,
its filters are the eigenvectors of the covariance of the training images' 2×2 patches (12 values each), scaled by
1/√(eigenvalue + ε), in both signs: so its outputs start decorrelated and of equal variance, and the blocks above
learn from the first step on inputs that are already whitened. Measured on CIFAR-10 (README "smallnet recipe
ablation"), it is the one initialisation choice that bought accuracy at a fixed budget. ``apply_init_options``
applies it with smallnet's other initialisation params.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from embedlab.core.params import ModelParams

# Added to every eigenvalue before the inverse square root: the smallest eigenvalues of natural-image patches are
# near 0, and without it their filters would blow noise up without bound (airbench's value, in [-1, 1] pixel units).
WHITENING_EPS = 5e-4
# Patches are drawn from this many training images: ~4.6 million 2×2 patches at 32 px, plenty for a 12×12
# covariance, and a second of work.
WHITENING_IMAGES = 5000


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
    from embedlab.models.backbones import identity_init

    if model_params.whiten_stem:
        whiten_stem(models.embedding, models.backbone, train_images, seed=seed)
    if model_params.identity_init:
        identity_init(models.backbone)
    if model_params.freeze_stem:
        # airbench's frozen whitening: trained and decayed, its filters lost 13x their norm in a 10-epoch CIFAR-10
        # run, though freezing them did not change that run's accuracy (README "airbench's own recipe")
        models.backbone.get_layer("stem_conv").kernel.trainable = False
