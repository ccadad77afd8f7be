"""Atomic, durable writes: an output either appears complete or not at all, even across a power cut.

Each writer fills a temporary sibling, flushes it to disk (``fsync``), renames it over the target and then syncs the
folder, so the rename itself is on disk: without the first sync a crash can leave an empty file under the final
name, without the second the old file can come back. Files and folders get the modes the user's umask gives any new
file (``mkstemp`` and ``mkdtemp`` alone make them private: 0600 and 0700), so teammates can read shared outputs.
A writer killed part-way leaves only its temporary sibling, named with its process id; the next writer of the same
target removes it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def _fsync_path(path: str | Path) -> None:
    """Flush a file's data, or a folder's entries (a rename inside it), to disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_path(Path(folder) / name)
        _fsync_path(folder)


def _temporary_prefix(target: Path) -> str:
    """The name every temporary sibling of ``target`` starts with: hidden, and naming the writing process, so a
    later writer can tell a killed writer's leftovers (:func:`_sweep_leftovers`) from a live writer's files."""
    _sweep_leftovers(target)
    return f".{target.name}.{os.getpid()}."


def _sweep_leftovers(target: Path) -> None:
    """Remove the temporary siblings of ``target`` whose writer is gone (killed part-way): they are never an output,
    but a dataset-sized one would otherwise stay on disk for good."""
    prefix = f".{target.name}."
    for sibling in target.parent.glob(f"{glob.escape(prefix)}*.tmp*"):
        pid = sibling.name[len(prefix) :].split(".", 1)[0]
        if not pid.isdigit() or _running(int(pid)):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _commit(tmp: str | Path, target: Path) -> None:
    """Rename the synced ``tmp`` over ``target``, then sync the folder so the rename survives a crash."""
    os.replace(tmp, target)
    _fsync_path(target.parent)


def durable_replace(source: str | Path, target: str | Path) -> None:
    """Move a finished file (a completed download) into place: its data synced first, the rename after."""
    _fsync_path(source)
    _commit(source, Path(target))


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            shutil.rmtree(target)
        _commit(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_file(target: str | Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling of ``target`` for writing; sync it and rename it into place on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _commit(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path (same suffix, for writers that check it) synced and renamed to ``target`` on
    success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=f".tmp-{target.name}", dir=target.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync_path(tmp)
        _commit(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def md5sum(path: str | Path) -> str:
    """A file's MD5 (DVC's hash, and the one dataset publishers list), streamed: files can outgrow memory."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


def write_json(path: str | Path, data: Any) -> None:
    """Write pretty, key-sorted JSON atomically (stable bytes for git and DVC)."""
    with atomic_file(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")


def write_npz(path: str | Path, arrays: dict[str, Any]) -> None:
    """Write an uncompressed, pickle-free ``.npz`` atomically and reproducibly.

    ``np.savez`` stamps every member with the current time, so the same arrays give different bytes and DVC
    hashes; here every member carries a fixed timestamp. Members are stored uncompressed so that a reader can
    memory-map them (:func:`embedlab.embed.embeddings.EmbeddingSet.load`).
    """
    import zipfile

    import numpy as np

    with atomic_file(path, "wb") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


def read_npy_header(handle: Any) -> tuple[tuple[int, ...], bool, Any, int]:
    """The ``.npy`` header at ``handle``'s position: shape, Fortran order, dtype and the offset its data starts at
    (to read rows or memory-map the data without loading it; the header is parsed, never unpickled)."""
    import numpy as np

    version = np.lib.format.read_magic(handle)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(handle)
    return tuple(shape), fortran_order, np.dtype(dtype), handle.tell()


def write_tree(target: str | Path, files: dict[str, bytes]) -> None:
    """Replace the directory ``target`` by one holding exactly ``files`` (relative name -> bytes), atomically."""
    with atomic_dir(target) as tmp:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)


def save_figure(figure: Any, path: str | Path, *, dpi: int = 100) -> None:
    """Save a matplotlib figure as a PNG atomically, then free it (figures hold memory until closed)."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, format="png")
    plt.close(figure)
