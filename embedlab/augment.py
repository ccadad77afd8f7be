"""On-the-fly augmentation as Keras preprocessing layers, built from ``augment.*``.

The layers work on float images in ``[0, 255]`` and are active only when called with ``training=True``, so the
same model graph serves training (augmented) and embedding (untouched).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedlab.params import AugmentParams


def build_augmentation(params: AugmentParams, seed: int = 0):  # -> keras.Sequential
    """A Sequential of the enabled augmentations (empty when all are off)."""
    import keras

    layers: list[keras.Layer] = []
    if params.flip != "none":
        layers.append(keras.layers.RandomFlip(params.flip, seed=seed))
    if params.rotation:
        layers.append(keras.layers.RandomRotation(params.rotation, fill_mode="reflect", seed=seed + 1))
    if params.zoom:
        layers.append(keras.layers.RandomZoom(params.zoom, fill_mode="reflect", seed=seed + 2))
    if params.shift:
        layers.append(keras.layers.RandomTranslation(params.shift, params.shift, fill_mode="reflect", seed=seed + 3))
    if params.shear:
        layers.append(keras.layers.RandomShear(params.shear, params.shear, fill_mode="reflect", seed=seed + 4))
    if params.contrast:
        layers.append(keras.layers.RandomContrast(params.contrast, value_range=(0, 255), seed=seed + 5))
    return keras.Sequential(layers, name="augmentation")


def draw_preview(
    images: np.ndarray, titles: list[str], params: AugmentParams, out: str | Path, copies: int = 5, seed: int = 0
) -> None:
    """Save a grid: one row per image, the original then ``copies`` augmented versions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    augment = build_augmentation(params, seed)
    batch = np.repeat(images.astype("float32"), copies, axis=0)
    augmented = np.asarray(augment(batch, training=True)).clip(0, 255).astype(np.uint8)
    rows = len(images)
    fig, axes = plt.subplots(rows, copies + 1, figsize=(1.6 * (copies + 1), 1.6 * rows), squeeze=False)
    for r in range(rows):
        cells = [images[r], *augmented[r * copies : (r + 1) * copies]]
        for c, cell in enumerate(cells):
            ax = axes[r][c]
            ax.imshow(cell, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if c == 0 else f"augmented {c}", fontsize=8)
        axes[r][0].set_ylabel(titles[r], fontsize=8)
    enabled = {k: v for k, v in params.model_dump().items() if v not in (0, 0.0, "none")}
    fig.suptitle("augment: " + (", ".join(f"{k}={v}" for k, v in enabled.items()) or "all off"), fontsize=9)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
