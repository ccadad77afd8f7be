"""``data/prepared``, as every stage after preprocess reads it (preprocess writes it: :mod:`embedlab.data.prepare`).

``data/prepared/`` holds:

* ``images.npy`` -- uint8 ``(N, S, S, 3)``, ``S = data.image_size``; read by rows with :class:`ImageRows`.
* ``index.csv`` -- row ``i`` describes image ``i``: ``id`` (stable, from the source), ``label``, ``class_name``,
  ``split`` (``train``/``val``/``test``).
* ``info.json`` -- ``class_names``, ``image_size``, ``fit``, ``source``.
* ``report.json`` -- images per split in total and per class, and every file the download skipped: the details
  behind ``reports/data.json``, kept out of it so it stays short with many classes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from embedlab.core.files import read_npy_header


@dataclass
class Prepared:
    """The prepared dataset as later stages read it; ``images`` are read from the file as they are indexed."""

    images: ImageRows
    index: pd.DataFrame
    class_names: list[str]
    image_size: int
    fit: str  # how non-square images were made square (data.fit): queries are made square the same way

    @classmethod
    def open(cls, root: str | Path) -> Prepared:
        """Open ``data/prepared`` (the index and info; the images are read when asked for)."""
        root = Path(root)
        info = json.loads((root / "info.json").read_text())
        index = pd.read_csv(
            root / "index.csv", dtype={"id": str, "split": str, "class_name": str}, keep_default_na=False
        )
        return cls(ImageRows(root / "images.npy"), index, info["class_names"], info["image_size"], info["fit"])

    def split(self, name: str) -> np.ndarray:
        """Row positions of one split, in file order."""
        return np.flatnonzero(self.index["split"].to_numpy() == name)

    @property
    def labels(self) -> np.ndarray:
        """The class index of every image, in index order."""
        return self.index["label"].to_numpy()


class _NpyFile:
    """An ``.npy`` file opened for reading rows: its descriptor (closed with the last view), header and layout."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as handle:
            self.shape, fortran_order, self.dtype, self.offset = read_npy_header(handle)
        if fortran_order:
            raise ValueError(f"{path}: a Fortran-ordered array cannot be read by rows")
        self.path = path
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.fd = os.open(path, os.O_RDONLY)

    def __del__(self) -> None:
        if hasattr(self, "fd"):
            os.close(self.fd)


class ImageRows:
    """Rows of an ``.npy`` image array read on demand with ``pread``, in any order, without holding the file.

    Why not the memory map: every page a process touches through a map stays in its resident memory (as file pages)
    until the kernel needs it back, so a stage that reads each of 200,000 images once would look, and be accounted,
    as large as the file. Pages read with ``pread`` stay in the kernel's page cache instead, shared and reclaimable:
    the process holds one batch. Consecutive rows are read with one call, so a scoring pass reads the file
    sequentially. ``take`` makes a view of some rows (a split) sharing the open file.
    """

    def __init__(self, path: str | Path) -> None:
        self._file = _NpyFile(Path(path))
        self.rows = np.arange(self._file.shape[0])

    def take(self, rows: np.ndarray) -> ImageRows:
        """A view of the rows at positions ``rows`` of this one."""
        view = object.__new__(ImageRows)
        view._file, view.rows = self._file, self.rows[rows]
        return view

    @property
    def shape(self) -> tuple[int, ...]:
        """``(rows, side, side, 3)``, as the array's."""
        return (len(self.rows), *self._file.row_shape)

    @property
    def dtype(self) -> np.dtype:
        """The pixels' type (uint8)."""
        return self._file.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | slice | np.ndarray | tuple) -> np.ndarray:
        """Rows by position (an int gives one image), read from the file now; a tuple indexes within them too."""
        if isinstance(key, tuple):
            first, rest = key[0], key[1:]
            return self[first][rest if np.ndim(self.rows[first]) == 0 else (slice(None), *rest)]
        picked = self.rows[key]
        if np.ndim(picked) == 0:
            return self._read(np.asarray([picked]))[0]
        return self._read(np.asarray(picked))

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        everything = self[:]
        return everything if dtype is None else everything.astype(dtype)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """Read ``rows`` of the file: sorted into runs of consecutive rows, one ``preadv`` per run."""
        file = self._file
        order = np.argsort(rows, kind="stable")
        ordered = np.empty((len(rows), *file.row_shape), file.dtype)
        for run in np.split(np.arange(len(rows)), np.flatnonzero(np.diff(rows[order]) != 1) + 1):
            if not len(run):
                continue
            buffer = memoryview(ordered[run[0] : run[-1] + 1]).cast("B")
            first_row = int(rows[order[run[0]]])
            start, done = file.offset + first_row * file.row_bytes, 0
            while done < len(buffer):
                got = os.preadv(file.fd, [buffer[done:]], start + done)
                if got == 0:
                    raise OSError(f"{file.path}: ends before row {first_row + done // file.row_bytes}")
                done += got
        if np.array_equal(order, np.arange(len(rows))):
            return ordered
        out = np.empty_like(ordered)
        out[order] = ordered
        return out
