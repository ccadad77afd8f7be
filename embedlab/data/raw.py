"""The ``data/raw`` format written by the download stage and read by preprocess.

``data/raw/`` holds:

* ``index.csv`` -- one row per usable image: ``id`` (stable: source path or source index), ``label`` (int),
  ``split`` (``train``/``test`` where the source has an official split, else empty);
  blob sources add ``offset`` and ``length``.
* ``images.npy`` -- uint8 ``(N, H, W, 3)`` for array sources (digits, cifar10), row ``i`` = index row ``i``; or
* ``images.bin`` -- the original encoded files back to back (folder source; images keep their own sizes).
* ``info.json`` -- ``source``, ``class_names``, ``skipped`` (``[{"path", "reason"}]``), counts.

Images are kept at their native size so that changing ``data.image_size`` reruns preprocess only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
from PIL import Image

from embedlab.core.files import write_json
from embedlab.data.images import decode


@dataclass
class RawInfo:
    """``data/raw/info.json``: the source, the class names, and the files skipped as unreadable."""

    source: str
    class_names: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)


def write_array_dataset(
    out: Path, info: RawInfo, images: np.ndarray, labels: np.ndarray, ids: list[str], splits: list[str]
) -> None:
    """Write an array source (all images share one native size)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "images.npy", images)
    frame = pd.DataFrame({"id": ids, "label": labels.astype(int), "split": splits})
    _write_index_and_info(out, frame, info)


class BlobWriter:
    """Append encoded image files to ``images.bin`` and remember where each one lives."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self._handle: BinaryIO = open(out / "images.bin", "wb")  # noqa: SIM115 - closed in finish()
        self._rows: list[dict[str, object]] = []

    def add(self, image_id: str, class_name: str, split: str, data: bytes) -> None:
        """Append one encoded image and its index row."""
        self._rows.append(
            {"id": image_id, "class": class_name, "split": split, "offset": self._handle.tell(), "length": len(data)}
        )
        self._handle.write(data)

    def __len__(self) -> int:
        return len(self._rows)

    def finish(self, source: str, skipped: list[dict[str, str]]) -> RawInfo:
        """Close the blob file; labels number the class names in sorted order."""
        self._handle.close()
        frame = pd.DataFrame(self._rows, columns=["id", "class", "split", "offset", "length"])
        class_names = sorted(set(frame["class"]))
        frame.insert(1, "label", frame.pop("class").map({name: i for i, name in enumerate(class_names)}))
        info = RawInfo(source=source, class_names=class_names, skipped=skipped)
        _write_index_and_info(self.out, frame, info)
        return info


def _write_index_and_info(out: Path, frame: pd.DataFrame, info: RawInfo) -> None:
    frame.to_csv(out / "index.csv", index=False)
    write_json(
        out / "info.json",
        {"source": info.source, "class_names": info.class_names, "images": len(frame), "skipped": info.skipped},
    )


@dataclass
class RawDataset:
    """A read handle on ``data/raw``: the index, class names, skipped files, and lazy image access."""

    root: Path
    index: pd.DataFrame
    source: str
    class_names: list[str]
    skipped: list[dict[str, str]]

    @classmethod
    def open(cls, root: str | Path) -> RawDataset:
        """Open ``data/raw`` (index and info; image bytes are read on demand)."""
        root = Path(root)
        info = json.loads((root / "info.json").read_text())
        index = pd.read_csv(root / "index.csv", dtype={"id": str, "split": str}, keep_default_na=False)
        return cls(root, index, info["source"], info["class_names"], info["skipped"])

    def images(self, rows: np.ndarray) -> Iterator[Image.Image]:
        """Yield the images at index positions ``rows`` as RGB Pillow images, in that order."""
        array_file = self.root / "images.npy"
        if array_file.exists():
            array = np.load(array_file, mmap_mode="r")
            for row in rows:
                yield Image.fromarray(np.ascontiguousarray(array[row]), "RGB")
            return
        offsets = self.index["offset"].to_numpy()
        lengths = self.index["length"].to_numpy()
        with open(self.root / "images.bin", "rb") as blobs:
            for row in rows:
                blobs.seek(int(offsets[row]))
                yield decode(blobs.read(int(lengths[row])))
