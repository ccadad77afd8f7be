"""The ``folder`` source: a directory or ``.tar``/``.tar.gz``/``.zip`` of ``<class>/<image>`` folders.

An optional ``train/`` + ``test/`` (and ``val/``) level on top is taken as the official split, and a single
wrapping folder (``my-data/train/cat/1.jpg``) is looked through. Archives are read in place, never extracted, and
an archive holding any member with an absolute path, a ``..`` component, a link or a device is refused whole.
Files Pillow cannot decode are skipped and listed in ``info.json``; zero usable images is an error.
"""

from __future__ import annotations

import os
import stat
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from embedlab.core.errors import UserError
from embedlab.data.images import ImageDecodeError, decode
from embedlab.data.raw import BlobWriter

SPLIT_NAMES = {"train": "train", "test": "test", "val": "val", "valid": "val", "validation": "val"}
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")


class UnsafeArchiveError(UserError):
    """An archive member could escape the target or is not a regular file."""


class EmptyDatasetError(UserError):
    """No usable image was found."""


Reader = Callable[[], bytes]
Member = tuple[PurePosixPath, Reader | None]  # a file and how to read it, or a folder (None)


def _is_ignored(path: PurePosixPath) -> bool:
    """Hidden files and macOS archive debris are not data and not worth reporting."""
    return any(part.startswith(".") or part == "__MACOSX" for part in path.parts)


def _check_member_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"refusing archive: member {name!r} has an absolute path")
    if ".." in path.parts or "\\" in name:
        raise UnsafeArchiveError(f"refusing archive: member {name!r} points outside the archive")
    return path


@contextmanager
def _tar_members(path: Path) -> Iterator[list[Member]]:
    with tarfile.open(path, "r:*") as archive:
        members = archive.getmembers()
        for member in members:
            _check_member_name(member.name)
            if member.issym() or member.islnk():
                raise UnsafeArchiveError(f"refusing archive: member {member.name!r} is a link")
            if not (member.isfile() or member.isdir()):
                raise UnsafeArchiveError(f"refusing archive: member {member.name!r} is not a regular file")

        def reader(member: tarfile.TarInfo) -> Reader:
            def read() -> bytes:
                handle = archive.extractfile(member)
                assert handle is not None
                return handle.read()

            return read

        yield [(PurePosixPath(m.name), reader(m) if m.isfile() else None) for m in members]


@contextmanager
def _zip_members(path: Path) -> Iterator[list[Member]]:
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        for info in infos:
            _check_member_name(info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UnsafeArchiveError(f"refusing archive: member {info.filename!r} is a link")
        yield [(PurePosixPath(i.filename), None if i.is_dir() else partial(archive.read, i)) for i in infos]


@contextmanager
def _dir_members(root: Path) -> Iterator[list[Member]]:
    members: list[Member] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        members += [(PurePosixPath((Path(dirpath) / name).relative_to(root).as_posix()), None) for name in dirnames]
        for name in sorted(filenames):
            full = Path(dirpath) / name
            members.append((PurePosixPath(full.relative_to(root).as_posix()), full.read_bytes))
    yield members


def open_members(path: Path) -> AbstractContextManager[list[Member]]:
    """``(relative path, read)`` for every file of a directory or archive, ``(path, None)`` for every folder, after
    the archive safety checks."""
    if path.is_dir():
        return _dir_members(path)
    name = path.name.lower()
    if name.endswith(".zip"):
        return _zip_members(path)
    if name.endswith(ARCHIVE_SUFFIXES) or tarfile.is_tarfile(path):
        return _tar_members(path)
    raise UserError(f"data.path: {path} is neither a directory nor a .tar/.tar.gz/.zip archive")


def _strip_wrapper(paths: list[PurePosixPath]) -> int:
    """How many leading folders every file shares and that are not themselves split or class folders."""
    depth = 0
    while True:
        heads = {p.parts[depth] for p in paths if len(p.parts) > depth + 1}
        deeper = all(len(p.parts) > depth + 2 for p in paths)
        if len(heads) != 1 or not deeper or next(iter(heads)).lower() in SPLIT_NAMES:
            return depth
        depth += 1


def _layout(paths: list[PurePosixPath]) -> tuple[int, bool]:
    """Return (folders to skip, whether the first remaining folder is a split)."""
    depth = _strip_wrapper(paths)
    heads = {p.parts[depth].lower() for p in paths if len(p.parts) > depth + 1}
    has_splits = bool(heads) and heads <= set(SPLIT_NAMES) and "train" in heads
    return depth, has_splits


def write_folder(out: Path, source: str | Path) -> tuple[int, list[dict[str, str]]]:
    """Validate every image of ``source`` and write the usable ones as a blob dataset; return (count, skipped)."""
    source = Path(source).expanduser()
    if not source.exists():
        raise UserError(f"data.path: {source} does not exist")
    with open_members(source) as listed:
        entries = [(p, read) for p, read in listed if not _is_ignored(p)]
        members = [(p, read) for p, read in entries if read is not None]
        depth, has_splits = _layout([p for p, _ in members])
        class_level = depth + (1 if has_splits else 0)
        folders = {p.parts[class_level] for p, read in entries if read is None and len(p.parts) == class_level + 1}
        folders |= {p.parts[class_level] for p, _ in members if len(p.parts) > class_level + 1}
        skipped: list[dict[str, str]] = []
        used: set[str] = set()
        writer = BlobWriter(out)
        for path, read in tqdm(members, desc="reading images", unit="file", leave=False, disable=None):
            rel = PurePosixPath(*path.parts[depth:])
            if len(path.parts) <= class_level + 1:
                skipped.append({"path": str(rel), "reason": "not inside a class folder"})
                continue
            data = read()
            try:
                decode(data)
            except ImageDecodeError as err:
                skipped.append({"path": str(rel), "reason": str(err)})
                continue
            split = SPLIT_NAMES[path.parts[depth].lower()] if has_splits else ""
            writer.add(str(rel), path.parts[class_level], split, data)
            used.add(path.parts[class_level])
        for name in sorted(folders - used):  # a class with no usable image is left out, and said so
            skipped.append({"path": f"{name}/", "reason": "class folder without a usable image: class left out"})
            print(f"download: class folder {name!r} has no usable image; the class is left out", file=sys.stderr)
    writer.finish("folder", skipped)
    if not len(writer):
        raise EmptyDatasetError(
            f"data.path: no usable images in {source} ({len(skipped)} files skipped); expected "
            "<class>/<image> folders, optionally under train/ and test/"
        )
    return len(writer), skipped
