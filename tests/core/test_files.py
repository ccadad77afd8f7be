"""The atomic writers are durable (data synced before the rename, the folder after it) and make files and folders
with the modes the user's umask gives, so a teammate can read shared outputs."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from embedlab.core.files import atomic_dir, durable_replace, save_figure, write_json, write_npz, write_tree


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_get_the_modes_the_umask_gives(tmp_path: Path, umask: int) -> None:
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    write_json(tmp_path / "metrics" / "m.json", {"a": 1})
    write_npz(tmp_path / "e.npz", {"x": np.zeros(3)})
    figure = plt.figure()
    save_figure(figure, tmp_path / "f.png")
    write_tree(tmp_path / "projector", {"a/b.tsv": b"1\n", "c.txt": b"2"})
    with atomic_dir(tmp_path / "prepared") as folder:
        (folder / "info.json").write_text("{}")
    for name in ("metrics/m.json", "e.npz", "f.png", "projector/a/b.tsv", "projector/c.txt", "prepared/info.json"):
        assert _mode(tmp_path / name) == file_mode, (name, oct(_mode(tmp_path / name)))
    for name in ("metrics", "projector", "projector/a", "prepared"):
        assert _mode(tmp_path / name) == dir_mode, (name, oct(_mode(tmp_path / name)))


def test_the_rename_comes_after_the_data_is_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple] = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        events.append(("fsync", path, path.read_bytes() if path.is_file() else None))
        fsync(fd)

    def recording_replace(source: str | Path, target: str | Path) -> None:
        events.append(("replace", Path(source), Path(target)))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    target = tmp_path / "out" / "m.json"
    write_json(target, {"map@5": 0.9})
    (synced_file, tmp, data), (renamed, source, dest), (synced_dir, folder, _) = events
    assert (synced_file, renamed, synced_dir) == ("fsync", "replace", "fsync")
    assert tmp == source and dest == target and folder == target.parent
    assert json.loads(data) == {"map@5": 0.9}  # the whole file was on disk before it got its name

    events.clear()
    part = tmp_path / "download.part"
    part.write_bytes(b"archive")
    durable_replace(part, tmp_path / "archive.tar.gz")
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"] and events[0][2] == b"archive"

    events.clear()
    write_tree(tmp_path / "tree", {"a.txt": b"A", "sub/b.txt": b"B"})
    kinds = [e[0] for e in events]
    assert kinds[-2:] == ["replace", "fsync"] and kinds[:-2].count("fsync") == 4  # 2 files, 2 folders
    assert {e[2] for e in events[:-2] if e[2] is not None} == {b"A", b"B"}
