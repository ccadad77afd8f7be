"""The scikit-learn ``digits`` source: 1,797 8×8 greyscale digits bundled with scikit-learn (works offline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from embedlab.data.raw import RawInfo, write_array_dataset


def write_digits(out: Path) -> int:
    """Write digits as 8×8 RGB uint8 (0..16 scaled to 0..255); no official split, so every split is empty."""
    bunch = load_digits()
    grey = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(grey[..., None], 3, axis=-1)
    ids = [f"digits/{i:04d}" for i in range(len(images))]
    info = RawInfo(source="digits", class_names=[str(name) for name in bunch.target_names])
    write_array_dataset(out, info, images, bunch.target, ids, [""] * len(images))
    return len(images)
