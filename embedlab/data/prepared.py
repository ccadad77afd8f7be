"""``data/prepared``, as every stage after preprocess reads it (preprocess writes it: :mod:`embedlab.data.prepare`).

``data/prepared/`` holds:

* ``images.npy`` -- uint8 ``(N, S, S, 3)``, ``S = data.image_size``; open with ``np.load(..., mmap_mode="r")``.
* ``index.csv`` -- row ``i`` describes image ``i``: ``id`` (stable, from the source), ``label``, ``class_name``,
  ``split`` (``train``/``val``/``test``).
* ``info.json`` -- ``class_names``, ``image_size``, ``fit``, ``source``.
* ``report.json`` -- images per split in total and per class, and every file the download skipped: the details
  behind ``reports/data.json``, kept out of it so it stays short with many classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass
class Prepared:
    """The prepared dataset as later stages read it; ``images`` is memory-mapped."""

    images: np.ndarray
    index: pd.DataFrame
    class_names: list[str]
    image_size: int
    fit: str  # how non-square images were made square (data.fit): queries are made square the same way

    @classmethod
    def open(cls, root: str | Path) -> Prepared:
        """Open ``data/prepared`` (the images as a read-only memory map)."""
        root = Path(root)
        info = json.loads((root / "info.json").read_text())
        index = pd.read_csv(
            root / "index.csv", dtype={"id": str, "split": str, "class_name": str}, keep_default_na=False
        )
        images = np.load(root / "images.npy", mmap_mode="r")
        return cls(images, index, info["class_names"], info["image_size"], info["fit"])

    def split(self, name: str) -> np.ndarray:
        """Row positions of one split, in file order."""
        return np.flatnonzero(self.index["split"].to_numpy() == name)

    @property
    def labels(self) -> np.ndarray:
        """The class index of every image, in index order."""
        return self.index["label"].to_numpy()
