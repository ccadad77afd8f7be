"""Small, fast tests of parts that the end-to-end runs pass through without pinning down: image decoding (EXIF,
transparency, fit), the CIFAR-10 binary format checks, optimizers and weight decay, layer freezing, strategies,
mixed precision and weight files."""

from __future__ import annotations

import io
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest

from embedlab.core.errors import UserError
from embedlab.core.params import DataParams
from embedlab.data.download import cifar10, fetch
from embedlab.data.download.cifar10 import CifarFormatError, parse_archive
from embedlab.data.download.http import ChecksumError, DownloadError, download
from embedlab.data.raw import RawDataset

from ..conftest import CifarArchive, FileServer, make_cifar_archive


def _rewrite(src: Path, dest: Path, change: dict[str, bytes | None]) -> Path:
    """Copy a tar archive, replacing (bytes) or dropping (None) the named members."""
    with tarfile.open(src) as old, tarfile.open(dest, "w:gz") as new:
        for member in old.getmembers():
            data = old.extractfile(member).read() if member.isfile() else None
            if member.name in change:
                data = change[member.name]
                if data is None:
                    continue
                member.size = len(data)
            new.addfile(member, io.BytesIO(data) if data is not None else None)
    return dest


def test_cifar_format_errors_name_the_member(tmp_path: Path) -> None:
    archive = make_cifar_archive(tmp_path / "cifar.tar.gz").path
    batch = "cifar-10-batches-bin/data_batch_2.bin"
    with pytest.raises(CifarFormatError, match=r"missing cifar-10-batches-bin/data_batch_2\.bin"):
        parse_archive(_rewrite(archive, tmp_path / "missing.tar.gz", {batch: None}))
    with pytest.raises(CifarFormatError, match=r"data_batch_2.bin: 3000 bytes is not a whole number of 3073-byte"):
        parse_archive(_rewrite(archive, tmp_path / "short.tar.gz", {batch: b"\0" * 3000}))
    bad_label = bytes([10]) + bytes(3072)
    with pytest.raises(CifarFormatError, match="label 10 but only 10 classes"):
        parse_archive(_rewrite(archive, tmp_path / "label.tar.gz", {batch: bad_label}))
    assert issubclass(CifarFormatError, UserError)  # one line, no traceback


def test_download_verifies_and_parses(tmp_path: Path, file_server: FileServer, cifar_archive: CifarArchive) -> None:
    dest = download(file_server.url, tmp_path / "dl" / "cifar.tar.gz", cifar_archive.md5, progress=False)
    assert dest.read_bytes() == cifar_archive.path.read_bytes()
    images, labels, ids, splits, names = cifar10.parse_archive(dest)
    np.testing.assert_array_equal(images, cifar_archive.images)
    np.testing.assert_array_equal(labels, cifar_archive.labels)
    assert splits.count("test") == 60 and splits.count("train") == 300
    assert names[0] == "airplane" and len(names) == 10
    assert len(set(ids)) == len(ids)


def test_write_cifar10_official_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_server: FileServer, cifar_archive: CifarArchive
) -> None:
    monkeypatch.setenv("EMBEDLAB_CACHE", str(tmp_path / "cache"))
    count = cifar10.write_cifar10(tmp_path / "raw", file_server.url, None, md5=cifar_archive.md5)
    raw = RawDataset.open(tmp_path / "raw")
    assert count == 360 and raw.source == "cifar10"
    assert list(raw.index["split"]).count("test") == 60
    first = np.asarray(next(raw.images(np.array([7]))))
    np.testing.assert_array_equal(first, cifar_archive.images[7])
    # The verified archive is cached: a second run makes no request.
    before = len(file_server.range_headers)
    cifar10.write_cifar10(tmp_path / "raw2", file_server.url, None, md5=cifar_archive.md5)
    assert len(file_server.range_headers) == before


def test_checksum_mismatch_names_both_and_leaves_nothing(tmp_path: Path, file_server: FileServer) -> None:
    dest = tmp_path / "dl" / "cifar.tar.gz"
    with pytest.raises(ChecksumError) as err:
        download(file_server.url, dest, "0" * 32, progress=False)
    message = str(err.value)
    assert "expected md5 " + "0" * 32 in message
    assert "got " in message and message.split("got ")[1] != "0" * 32
    assert list(dest.parent.iterdir()) == []


def test_resumes_after_connection_cut(tmp_path: Path, file_server: FileServer, cifar_archive: CifarArchive) -> None:
    cut = len(file_server.payload) // 3
    file_server.cut_after, file_server.cuts_left = cut, 1
    dest = download(file_server.url, tmp_path / "cifar.tar.gz", cifar_archive.md5, backoff=0.01, progress=False)
    assert dest.read_bytes() == file_server.payload
    assert file_server.range_headers[0] is None and len(file_server.range_headers) == 2
    resumed_at = int(file_server.range_headers[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= cut


def test_resumes_partial_file_from_earlier_run(
    tmp_path: Path, file_server: FileServer, cifar_archive: CifarArchive
) -> None:
    file_server.cut_after, file_server.cuts_left = 100_000, 3
    with pytest.raises(DownloadError):
        download(file_server.url, tmp_path / "cifar.tar.gz", cifar_archive.md5, retries=2, backoff=0.01, progress=False)
    assert not (tmp_path / "cifar.tar.gz").exists()
    partial = (tmp_path / "cifar.tar.gz.part").stat().st_size
    assert partial > 0
    dest = download(file_server.url, tmp_path / "cifar.tar.gz", cifar_archive.md5, progress=False)
    assert dest.read_bytes() == file_server.payload
    assert file_server.range_headers[-1] == f"bytes={partial}-"


def test_server_ignoring_range_restarts_cleanly(
    tmp_path: Path, file_server: FileServer, cifar_archive: CifarArchive
) -> None:
    file_server.honour_range = False
    file_server.cut_after, file_server.cuts_left = 300_000, 1
    dest = download(file_server.url, tmp_path / "cifar.tar.gz", cifar_archive.md5, backoff=0.01, progress=False)
    assert dest.read_bytes() == file_server.payload  # not the first chunks twice
    assert file_server.range_headers[0] is None and file_server.range_headers[1].startswith("bytes=")


def test_stage_failure_leaves_data_dir_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_server: FileServer
) -> None:
    """The stage checks the official MD5, which a generated archive cannot match: nothing may land in data/."""
    monkeypatch.setenv("EMBEDLAB_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(ChecksumError, match=cifar10.ARCHIVE_MD5):
        fetch(DataParams(source="cifar10", url=file_server.url), data / "raw")
    assert list(data.iterdir()) == []
    assert list((tmp_path / "cache").iterdir()) == []


def test_offline_error_offers_both_ways_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDLAB_CACHE", str(tmp_path / "cache"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once we leave the block: connection refused
    monkeypatch.setattr(cifar10, "download", lambda *a, **k: download(*a, **{**k, "retries": 1, "backoff": 0.01}))
    with pytest.raises(DownloadError) as err:
        cifar10.obtain_archive(f"http://127.0.0.1:{port}/cifar-10-binary.tar.gz", None)
    message = str(err.value)
    assert "data.path=" in message and "data.source=digits" in message and f"127.0.0.1:{port}" in message
    assert not (tmp_path / "data").exists()


def test_local_archive_is_verified(tmp_path: Path, cifar_archive: CifarArchive) -> None:
    assert cifar10.obtain_archive("unused", str(cifar_archive.path), md5=cifar_archive.md5) == cifar_archive.path
    with pytest.raises(ChecksumError, match=f"got {cifar_archive.md5}"):
        cifar10.obtain_archive("unused", str(cifar_archive.path))
    with pytest.raises(DownloadError, match=r"data\.path"):
        cifar10.obtain_archive("unused", str(tmp_path / "missing.tar.gz"))


def test_a_busy_server_is_retried_after_the_time_it_asks_for(
    tmp_path: Path, file_server: FileServer, cifar_archive: CifarArchive, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []
    monkeypatch.setattr("embedlab.data.download.http.time.sleep", waits.append)
    file_server.busy = [(503, "7"), (429, None), (503, "100000")]
    dest = download(file_server.url, tmp_path / "cifar.tar.gz", cifar_archive.md5, backoff=0.5, progress=False)
    assert dest.read_bytes() == cifar_archive.path.read_bytes()
    assert waits == [7.0, 1.0, 120.0]  # Retry-After; none given: back-off (0.5 * 2); a huge one: capped
    file_server.busy = [(503, "0")] * 3
    with pytest.raises(DownloadError, match=r"after 3 attempts: HTTP 503"):
        download(file_server.url, tmp_path / "again.tar.gz", cifar_archive.md5, retries=2, progress=False)
    assert not (tmp_path / "again.tar.gz").exists()


def test_a_resumed_download_asks_for_the_stored_bytes(
    tmp_path: Path, file_server: FileServer, cifar_archive: CifarArchive
) -> None:
    """A server that gzips for clients that accept it: a resume offset counts stored bytes, so every request must
    ask for those (identity), or the resumed file is garbage."""
    file_server.gzip_if_accepted = True
    file_server.cut_after, file_server.cuts_left = len(file_server.payload) // 2, 1
    dest = download(file_server.url, tmp_path / "cifar.tar.gz", cifar_archive.md5, backoff=0.01, progress=False)
    assert dest.read_bytes() == cifar_archive.path.read_bytes()
    assert file_server.accept_encodings == ["identity", "identity"] and file_server.range_headers[1] is not None
