"""The folder source: mixed images, bad files, hostile archives, and the real CIFAR-10 JPEG archive."""

from __future__ import annotations

import io
import os
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedlab.core.errors import UserError
from embedlab.core.params import DataParams
from embedlab.data.download.folder import EmptyDatasetError, UnsafeArchiveError, write_folder
from embedlab.data.prepare import prepare
from embedlab.data.prepared import Prepared
from embedlab.data.raw import RawDataset

from ..conftest import CIFAR_JPEG


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def make_image_tree(root: Path) -> None:
    """Two classes of images in many sizes, modes and formats, plus one corrupt image and one text file."""
    rng = np.random.default_rng(0)

    def noise(w: int, h: int, channels: int) -> np.ndarray:
        return rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8).squeeze()

    files = {
        "cat/rgb.jpg": _encode(Image.fromarray(noise(64, 48, 3)), "JPEG"),
        "cat/grey.png": _encode(Image.fromarray(noise(20, 30, 1), "L"), "PNG"),
        "cat/alpha.png": _encode(Image.fromarray(noise(50, 50, 4), "RGBA"), "PNG"),
        "cat/palette.gif": _encode(Image.fromarray(noise(33, 17, 3)).convert("P"), "GIF"),
        "cat/cmyk.jpg": _encode(Image.fromarray(noise(40, 40, 3)).convert("CMYK"), "JPEG"),
        "dog/small.bmp": _encode(Image.fromarray(noise(7, 9, 3)), "BMP"),
        "dog/big.webp": _encode(Image.fromarray(noise(300, 120, 3)), "WEBP"),
        "dog/deep.png": _encode(Image.fromarray(noise(16, 16, 1).astype(np.uint16) * 257), "PNG"),
        "dog/tiff.tif": _encode(Image.fromarray(noise(24, 24, 3)), "TIFF"),
        "dog/corrupt.jpg": _encode(Image.fromarray(noise(64, 64, 3)), "JPEG")[:300],
        "dog/notes.txt": b"not an image\n",
        ".DS_Store": b"\0\0",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    make_image_tree(root)
    return root


def _check_mixed(raw_dir: Path, prefix: str = "") -> None:
    raw = RawDataset.open(raw_dir)
    assert raw.class_names == ["cat", "dog"]
    assert len(raw.index) == 9
    assert sorted(s["path"] for s in raw.skipped) == [f"{prefix}dog/corrupt.jpg", f"{prefix}dog/notes.txt"]
    assert all(s["reason"] for s in raw.skipped)


def test_directory_with_mixed_images(tmp_path: Path, image_tree: Path) -> None:
    count, skipped = write_folder(tmp_path / "raw", image_tree)
    assert count == 9 and len(skipped) == 2
    _check_mixed(tmp_path / "raw")
    prepare(tmp_path / "raw", tmp_path / "prepared", DataParams(image_size=16, test_fraction=0.4, val_fraction=0.3))
    prepared = Prepared.open(tmp_path / "prepared")
    assert prepared.images.shape == (9, 16, 16, 3) and prepared.images.dtype == np.uint8
    assert set(prepared.index["split"]) == {"train", "val", "test"}
    ids = list(prepared.index["id"])
    for image_id, pixels in zip(ids, prepared.images, strict=True):  # noise in every mode: noise out, never flat
        assert pixels.std() > 3, image_id
    grey = prepared.images[ids.index("cat/grey.png")].astype(int)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


TAR_MODES = {"tar": "w", "tar.gz": "w:gz", "tgz": "w:gz", "tar.bz2": "w:bz2", "tar.xz": "w:xz"}


@pytest.mark.parametrize("kind", [*TAR_MODES, "zip"])
def test_archives_read_like_directories(tmp_path: Path, image_tree: Path, kind: str) -> None:
    archive = tmp_path / f"photos.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as out:
            for path in sorted(image_tree.rglob("*")):
                out.write(path, Path("photos") / path.relative_to(image_tree))
    else:
        with tarfile.open(archive, TAR_MODES[kind]) as out:
            out.add(image_tree, arcname="photos")
    write_folder(tmp_path / "raw", archive)
    _check_mixed(tmp_path / "raw")  # the wrapping photos/ folder is looked through


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    with tarfile.open(path, "w") as out:
        good = tarfile.TarInfo("cat/ok.png")
        payload = _encode(Image.new("RGB", (4, 4)), "PNG")
        good.size = len(payload)
        out.addfile(good, io.BytesIO(payload))
        member.size = len(data) if member.isfile() else 0
        out.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _special(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (tarfile.TarInfo("../evil.png"), "points outside"),
        (tarfile.TarInfo("cat/../../evil.png"), "points outside"),
        (tarfile.TarInfo("/tmp/evil.png"), "absolute path"),
        (_special("cat/link.png", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (_special("cat/hard.png", tarfile.LNKTYPE, "cat/ok.png"), "is a link"),  # even to a member inside
        (_special("cat/tty.png", tarfile.CHRTYPE), "not a regular file"),
        (_special("cat/disk.png", tarfile.BLKTYPE), "not a regular file"),
        (_special("cat/pipe.png", tarfile.FIFOTYPE), "not a regular file"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "char-device", "block-device", "fifo"],
)
def test_malicious_tar_is_refused(tmp_path: Path, member: tarfile.TarInfo, why: str) -> None:
    archive = _tar_with(tmp_path / "evil.tar", member)
    with pytest.raises(UnsafeArchiveError, match=f"refusing archive: member '{re.escape(member.name)}' .*{why}"):
        write_folder(tmp_path / "out" / "raw", archive)
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "out" / "raw" / "index.csv").exists()


def test_malicious_zip_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("cat/ok.png", _encode(Image.new("RGB", (4, 4)), "PNG"))
        out.writestr("../evil.png", b"x")
    with pytest.raises(UnsafeArchiveError, match=r"\.\./evil\.png"):
        write_folder(tmp_path / "raw", archive)
    for name, why in (("cat/../../evil.png", "points outside"), ("/tmp/evil.png", "absolute path"),
                      ("C:/evil.png", "absolute path"), ("cat\\..\\..\\evil.png", "points outside")):  # fmt: skip
        with zipfile.ZipFile(tmp_path / "nested.zip", "w") as out:
            out.writestr("cat/ok.png", _encode(Image.new("RGB", (4, 4)), "PNG"))
            out.writestr(zipfile.ZipInfo(name), b"x")
        with pytest.raises(UnsafeArchiveError, match=why):
            write_folder(tmp_path / "raw", tmp_path / "nested.zip")
        assert not (tmp_path / "raw" / "index.csv").exists() and not (tmp_path / "evil.png").exists()
    link = zipfile.ZipInfo("cat/link.png")
    link.external_attr = 0o120777 << 16
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as out:
        out.writestr(link, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="is a link"):
        write_folder(tmp_path / "raw", tmp_path / "link.zip")


def test_no_usable_images_is_fatal(tmp_path: Path) -> None:
    (tmp_path / "src" / "cat").mkdir(parents=True)
    (tmp_path / "src" / "cat" / "a.txt").write_text("hello")
    with pytest.raises(EmptyDatasetError, match="no usable images"):
        write_folder(tmp_path / "raw", tmp_path / "src")


@pytest.mark.parametrize("kind", ["dir", "tar", "zip"])
def test_an_empty_class_folder_is_reported_not_dropped_silently(tmp_path: Path, kind: str, capsys) -> None:
    src = tmp_path / "src"
    for name in ("cat", "dog"):
        (src / name).mkdir(parents=True)
        for i in range(2):
            (src / name / f"{i}.png").write_bytes(_encode(Image.new("RGB", (8, 8), (i, 9, 0)), "PNG"))
    (src / "eel").mkdir()
    (src / "fox").mkdir()
    (src / "fox" / "notes.txt").write_text("not an image")
    source = src
    if kind == "tar":
        source = tmp_path / "src.tar"
        with tarfile.open(source, "w") as archive:
            archive.add(src, arcname="src")
    elif kind == "zip":
        source = tmp_path / "src.zip"
        with zipfile.ZipFile(source, "w") as archive:
            for path in sorted(src.rglob("*")):
                archive.write(path, f"src/{path.relative_to(src).as_posix()}" + ("/" if path.is_dir() else ""))
    _, skipped = write_folder(tmp_path / "raw", source)
    reasons = {entry["path"]: entry["reason"] for entry in skipped}
    assert reasons["eel/"] == reasons["fox/"] == "class folder without a usable image: class left out"
    assert RawDataset.open(tmp_path / "raw").class_names == ["cat", "dog"]
    assert "class folder 'eel' has no usable image" in capsys.readouterr().err


def test_one_class_stops_at_preprocess_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "src" / "only").mkdir(parents=True)
    for i in range(4):
        (tmp_path / "src" / "only" / f"{i}.png").write_bytes(_encode(Image.new("RGB", (8, 8), (i, 0, 0)), "PNG"))
    write_folder(tmp_path / "raw", tmp_path / "src")
    with pytest.raises(UserError, match=r"^data: 1 class with usable images \(only\); .* need at least two"):
        prepare(tmp_path / "raw", tmp_path / "prepared", DataParams())
    assert not (tmp_path / "prepared").exists()


def test_train_test_layout_is_official_split(tmp_path: Path) -> None:
    for split, count in (("train", 6), ("test", 2)):
        for cls in ("a", "b"):
            for i in range(count):
                path = tmp_path / "src" / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (5, 5), (i * 20, 0, 0)).save(path)
    write_folder(tmp_path / "raw", tmp_path / "src")
    prepare(tmp_path / "raw", tmp_path / "prepared", DataParams(image_size=8, val_fraction=0.5))
    index = Prepared.open(tmp_path / "prepared").index
    assert sorted(index[index["split"] == "test"]["id"]) == [f"test/{c}/{i}.png" for c in "ab" for i in range(2)]
    assert (index["split"] == "val").sum() == 6 and (index["split"] == "train").sum() == 6


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_JPEG.exists(), reason=f"{CIFAR_JPEG} not present (needs ../shared/data)")
def test_real_cifar10_jpeg_archive(tmp_path: Path) -> None:
    count, skipped = write_folder(tmp_path / "raw", CIFAR_JPEG)
    raw = RawDataset.open(tmp_path / "raw")
    assert count == 60_000 and skipped == []
    assert raw.class_names == sorted(
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    )
    splits = raw.index["split"].value_counts().to_dict()
    assert splits == {"train": 50_000, "test": 10_000}
    assert (raw.index.groupby("label").size() == 6_000).all()
    image = next(raw.images(np.array([0])))
    assert image.size == (32, 32) and image.mode == "RGB"
    assert os.path.getsize(tmp_path / "raw" / "images.bin") == raw.index["length"].sum()


def test_a_missing_data_path_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^data\.path: .*/nowhere does not exist$"):
        write_folder(tmp_path / "raw", tmp_path / "nowhere")
    assert not (tmp_path / "raw").exists()
