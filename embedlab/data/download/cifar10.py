"""The official CIFAR-10 *binary* release, fetched over HTTP (or read from a local copy) and parsed with NumPy.

Each ``*.bin`` file is a run of 3,073-byte records: one label byte, then 1,024 red, 1,024 green and 1,024 blue
bytes of a 32×32 image in row-major order. The archive is read in place (nothing is extracted to disk) and
nothing in it is unpickled.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np

from embedlab.core.errors import UserError
from embedlab.core.files import md5sum
from embedlab.data.download.http import ChecksumError, DownloadError, download
from embedlab.data.raw import RawInfo, write_array_dataset

ARCHIVE_NAME = "cifar-10-binary.tar.gz"
ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
FOLDER = "cifar-10-batches-bin"
TRAIN_BATCHES = [f"{FOLDER}/data_batch_{i}.bin" for i in range(1, 6)]
TEST_BATCH = f"{FOLDER}/test_batch.bin"
META = f"{FOLDER}/batches.meta.txt"
SIDE = 32
RECORD_BYTES = 1 + SIDE * SIDE * 3


class CifarFormatError(UserError):
    """The archive does not have the layout of the official CIFAR-10 binary release."""


def cache_dir() -> Path:
    """Where verified downloads are kept between runs (``$EMBEDLAB_CACHE``, default ``~/.cache/embedlab``)."""
    return Path(os.environ.get("EMBEDLAB_CACHE", Path.home() / ".cache" / "embedlab"))


def obtain_archive(url: str, local_path: str | None, md5: str = ARCHIVE_MD5, **download_options: float) -> Path:
    """Return a verified archive: the local copy at ``local_path`` if given, else a (cached) download of ``url``."""
    if local_path:
        path = Path(local_path).expanduser()
        if not path.is_file():
            raise DownloadError(f"data.path: {path} is not a file (expected {ARCHIVE_NAME})")
        actual = md5sum(path)
        if actual != md5:
            raise ChecksumError(f"checksum mismatch for {path}: expected md5 {md5}, got {actual}")
        return path
    try:
        return download(url, cache_dir() / ARCHIVE_NAME, md5, **download_options)  # type: ignore[arg-type]
    except ChecksumError:
        raise
    except DownloadError as err:
        raise DownloadError(
            f"{err}. Either download {ARCHIVE_NAME} yourself and set data.path=/path/to/{ARCHIVE_NAME}, "
            "or use the bundled offline dataset with data.source=digits."
        ) from err


def _parse_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    if len(raw) % RECORD_BYTES:
        raise CifarFormatError(f"{name}: {len(raw)} bytes is not a whole number of {RECORD_BYTES}-byte records")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    images = records[:, 1:].reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def parse_archive(path: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[str], list[str]]:
    """Return ``images, labels, ids, splits, class_names`` from a CIFAR-10 binary archive."""
    with tarfile.open(path, "r:*") as archive:
        members = {member.name: member for member in archive.getmembers() if member.isfile()}
        missing = [name for name in [*TRAIN_BATCHES, TEST_BATCH, META] if name not in members]
        if missing:
            raise CifarFormatError(f"{path}: not a CIFAR-10 binary archive (missing {', '.join(missing)})")

        def read(name: str) -> bytes:
            handle = archive.extractfile(members[name])
            assert handle is not None
            return handle.read()

        class_names = [line.strip() for line in read(META).decode("ascii").splitlines() if line.strip()]
        parts, ids, splits = [], [], []
        for name in [*TRAIN_BATCHES, TEST_BATCH]:
            split = "test" if name == TEST_BATCH else "train"
            images, labels = _parse_batch(read(name), name)
            if labels.size and labels.max() >= len(class_names):
                raise CifarFormatError(f"{name}: label {labels.max()} but only {len(class_names)} classes")
            stem = Path(name).stem
            ids += [f"cifar10/{stem}/{i:05d}" for i in range(len(labels))]
            splits += [split] * len(labels)
            parts.append((images, labels))
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels, ids, splits, class_names


def write_cifar10(out: Path, url: str, local_path: str | None, md5: str = ARCHIVE_MD5) -> int:
    """The cifar10 source: obtain the official archive (checksum-verified), parse it, write ``data/raw``; return the
    image count."""
    archive = obtain_archive(url, local_path, md5)
    images, labels, ids, splits, class_names = parse_archive(archive)
    write_array_dataset(out, RawInfo(source="cifar10", class_names=class_names), images, labels, ids, splits)
    return len(labels)
