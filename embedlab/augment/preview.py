"""The augment_preview stage's picture: training images beside augmented copies of them."""

from __future__ import annotations

import numpy as np

from embedlab.augment.layers import build_augmentation
from embedlab.core.params import AugmentParams


def draw_preview(images: np.ndarray, titles: list[str], params: AugmentParams, *, copies: int = 5, seed: int = 0):
    """A figure with one row per image: the original, then ``copies`` augmented versions, drawn by the same layers
    that train uses (so the picture shows what training sees)."""
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
    return fig
