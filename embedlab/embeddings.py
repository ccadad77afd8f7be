"""Computing and storing embeddings: ``data/embeddings/<model>.npz``.

Each file holds ``embeddings`` (float32 ``(N, D)``, rows L2-normalised), ``ids``, ``labels``, ``splits`` (one per
row, same order as ``data/prepared``) and ``class_names``. Strings are fixed-width unicode arrays, so the file
loads with ``np.load(path)`` and no pickle. The zip members carry a fixed timestamp, so identical embeddings give
byte-identical files (and identical DVC hashes).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedlab.fsutil import atomic_file


@dataclass
class EmbeddingSet:
    embeddings: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    class_names: np.ndarray

    def split(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.splits == name)

    def save(self, path: str | Path) -> None:
        arrays = {
            "embeddings": np.ascontiguousarray(self.embeddings, dtype=np.float32),
            "ids": np.asarray(self.ids, dtype=str),
            "labels": np.asarray(self.labels, dtype=np.int64),
            "splits": np.asarray(self.splits, dtype=str),
            "class_names": np.asarray(self.class_names, dtype=str),
        }
        with atomic_file(path, "wb") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
            for name, array in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingSet:
        with np.load(path, allow_pickle=False) as data:
            return cls(*(data[key] for key in ("embeddings", "ids", "labels", "splits", "class_names")))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def embed_images(model, images: np.ndarray, batch_size: int = 256, progress: bool = True) -> np.ndarray:
    """Embed uint8 images (a memory map is fine) in batches.

    A tf.data pipeline reads the next slice of the memory map while the current batch runs, and Keras' own
    compiled predict loop does the forward pass (it beat a hand-written ``tf.function`` loop by ~2x on CPU), so
    memory stays at one batch of pixels however large the dataset.
    """
    import tensorflow as tf

    count = len(images)
    if count == 0:
        return np.zeros((0, model.output_shape[-1]), np.float32)

    def batches():
        for start in range(0, count, batch_size):
            yield np.asarray(images[start : start + batch_size])

    spec = tf.TensorSpec((None, *images.shape[1:]), tf.uint8)
    dataset = tf.data.Dataset.from_generator(batches, output_signature=spec).prefetch(2)
    return np.asarray(model.predict(dataset, verbose=1 if progress else 0), dtype=np.float32)
