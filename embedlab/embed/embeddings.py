"""Computing and storing embeddings: ``data/embeddings/<backbone>.npz`` and ``data/stack/stack.npz``.

Each file holds ``embeddings`` (float32 ``(N, D)``, rows L2-normalised), ``ids``, ``labels``, ``splits`` (one per
row, same order as ``data/prepared``) and ``class_names``. Strings are fixed-width unicode arrays, so the file
loads with ``np.load(path)`` and no pickle. The zip members carry a fixed timestamp, so identical embeddings give
byte-identical files (and identical DVC hashes).
"""

from __future__ import annotations

import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedlab.augment.test_time import TestTimeViews, View
from embedlab.core.errors import require_output
from embedlab.core.files import read_npy_header, write_npz
from embedlab.core.layout import RAW_PIXELS, STACK, Layout

if TYPE_CHECKING:
    from embedlab.core.params import EmbedParams
    from embedlab.data.prepared import Prepared


# The raw-pixel baseline compares images at most this many pixels a side (the "tiny images" of Torralba et al.): its
# vectors are a gallery evaluate holds in memory, 3,072 floats an image here against 150,528 at 224 px.
RAW_PIXELS_MAX_SIDE = 32
RAW_PIXELS_CHUNK = 4096  # images converted at a time


def producing_stage(model: str) -> str:
    """The DVC stage that writes a model's embeddings (for "run `dvc repro …`" messages)."""
    return STACK if model == STACK else f"embed@{model}"


@dataclass
class EmbeddingSet:
    """One model's embeddings of every image, with the image ids, labels and splits in the same row order."""

    embeddings: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    class_names: np.ndarray

    def split(self, name: str) -> np.ndarray:
        """Row indices of one split (train, val or test)."""
        return np.flatnonzero(self.splits == name)

    def rows(self, splits: str) -> np.ndarray:
        """Row indices of ``"all"`` or of splits joined by ``+`` (``"train+val"``): how galleries are named."""
        return np.arange(len(self.ids)) if splits == "all" else np.flatnonzero(np.isin(self.splits, splits.split("+")))

    def save(self, path: str | Path) -> None:
        """Write the file format of this module's docstring (reproducible bytes, see :func:`write_npz`)."""
        write_npz(
            path,
            {
                "embeddings": np.ascontiguousarray(self.embeddings, dtype=np.float32),
                "ids": np.asarray(self.ids, dtype=str),
                "labels": np.asarray(self.labels, dtype=np.int64),
                "splits": np.asarray(self.splits, dtype=str),
                "class_names": np.asarray(self.class_names, dtype=str),
            },
        )

    @classmethod
    def load(cls, path: str | Path, mmap: bool = False) -> EmbeddingSet:
        """Read a file; with ``mmap`` the embeddings matrix stays on disk as a read-only memory map."""
        with np.load(path, allow_pickle=False) as data:
            keys = ("embeddings", "ids", "labels", "splits", "class_names")
            arrays = {key: data[key] for key in keys if not (mmap and key == "embeddings")}
        if mmap:
            arrays["embeddings"] = _memmap_member(path, "embeddings.npy")
        return cls(**arrays)


def _memmap_member(path: str | Path, member: str) -> np.ndarray:
    """Memory-map one ``.npy`` member of an uncompressed zip (how :meth:`EmbeddingSet.save` writes them)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{path}: {member} is compressed and cannot be memory-mapped")
    with open(path, "rb") as handle:
        handle.seek(info.header_offset + 26)  # the local header's name and extra-field lengths
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
        handle.seek(info.header_offset + 30 + name_length + extra_length)
        shape, fortran_order, dtype, offset = read_npy_header(handle)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C")


def raw_pixel_set(prepared: Prepared) -> EmbeddingSet:
    """The baseline model: each prepared image, box-averaged down to ``RAW_PIXELS_MAX_SIDE`` when larger, flattened
    and L2-normalised; built a chunk of images at a time into one float32 array (one copy of the vectors in memory)."""
    from PIL import Image

    count, side = len(prepared.index), prepared.image_size
    small = min(side, RAW_PIXELS_MAX_SIDE)
    flat = np.empty((count, small * small * 3), np.float32)
    for start in range(0, count, RAW_PIXELS_CHUNK):
        chunk = prepared.images[start : start + RAW_PIXELS_CHUNK]
        if small < side:
            chunk = np.stack([np.asarray(Image.fromarray(image).resize((small, small), Image.BOX)) for image in chunk])
        rows = flat[start : start + len(chunk)]
        rows[:] = chunk.reshape(len(chunk), -1)
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    index = prepared.index
    return EmbeddingSet(flat, index["id"].to_numpy(), prepared.labels, index["split"].to_numpy(), prepared.class_names)


def load_sets(models: list[str], prepared: Prepared | None, layout: Layout) -> dict[str, EmbeddingSet]:
    """Each model's embeddings (a clear error naming the stage to run when one is missing), then ``raw_pixels``
    when ``prepared`` is given."""
    sets = {}
    for model in models:
        sets[model] = EmbeddingSet.load(require_output(layout.embeddings(model), producing_stage(model)))
    if prepared is not None:
        sets[RAW_PIXELS] = raw_pixel_set(prepared)
    return sets


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Unit-length float32 rows (an all-zero row stays zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def embedding_views(embed: EmbedParams) -> TestTimeViews:
    """The views every image, gallery or query, is embedded from (``embed.flip_average``,
    ``embed.translate_average``)."""
    return TestTimeViews.of(flip=embed.flip_average, translate=embed.translate_average)


def embed_images(
    model, images: np.ndarray, *, batch_size: int = 256, progress: bool = True, views: TestTimeViews | None = None
) -> np.ndarray:
    """Embed uint8 images (an array, or :class:`~embedlab.data.prepared.ImageRows` read as needed) in batches of
    ``batch_size`` (fewer for large images: :func:`~embedlab.core.runtime.forward_batch_size`); with several
    ``views`` (``embed.flip_average``, ``embed.translate_average``), the normalised weighted mean of each view's
    embeddings.

    A tf.data pipeline reads the next batch while the current one runs, and Keras' own compiled predict loop does the
    forward pass (it beat a hand-written ``tf.function`` loop by ~2x on CPU), so memory stays at one batch of pixels
    however large the dataset.
    """
    import tensorflow as tf

    from embedlab.core.runtime import finish_pipeline, forward_batch_size

    count = len(images)
    batch_size = forward_batch_size(batch_size, images.shape[1])
    # A bar redrawn in place on a terminal; in a log (CI, `dvc repro > log`) one line when the pass is done.
    verbose = (1 if sys.stdout.isatty() else 2) if progress else 0
    if count == 0:
        return np.zeros((0, model.output_shape[-1]), np.float32)

    def predict(view: View) -> np.ndarray:
        def batches():
            for start in range(0, count, batch_size):
                yield view(np.asarray(images[start : start + batch_size]))

        spec = tf.TensorSpec((None, *images.shape[1:]), tf.uint8)
        dataset = tf.data.Dataset.from_generator(batches, output_signature=spec)
        # The batch count, told to Keras: its progress bar counts "3/8" instead of "3/Unknown", and it does not warn
        # that the input "ran out of data" when the last batch is read.
        dataset = finish_pipeline(dataset.apply(tf.data.experimental.assert_cardinality(-(-count // batch_size))))
        return np.asarray(model.predict(dataset, verbose=verbose), dtype=np.float32)

    views = views or TestTimeViews.of(flip=False, translate=False)
    if views.plain:
        return predict(views.views[0])
    return l2_normalize(views.average(predict(view) for view in views.views))  # one view's vectors held at a time
