"""Reading data/prepared by rows: the same pixels as the array, and memory that does not grow with what is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedlab.core.params import DataParams
from embedlab.data.download.digits import write_digits
from embedlab.data.prepare import prepare
from embedlab.data.prepared import ImageRows, Prepared


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Path]:
    images = np.random.default_rng(0).integers(0, 256, (300, 5, 5, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("rows") / "images.npy"
    np.save(path, images)
    return images, path


def test_rows_read_in_any_order_equal_the_array(stored: tuple[np.ndarray, Path]) -> None:
    images, path = stored
    rows = ImageRows(path)
    assert rows.shape == images.shape and rows.dtype == np.uint8 and len(rows) == 300
    picks = np.array([7, 3, 4, 5, 299, 0, 0, 150, 151, 8])  # runs, repeats, out of order
    np.testing.assert_array_equal(rows[picks], images[picks])
    np.testing.assert_array_equal(rows[42], images[42])
    np.testing.assert_array_equal(rows[-1], images[-1])
    np.testing.assert_array_equal(rows[10:250:3], images[10:250:3])
    np.testing.assert_array_equal(rows[picks, :, ::-1], images[picks, :, ::-1])
    np.testing.assert_array_equal(rows[5, 1], images[5, 1])
    np.testing.assert_array_equal(np.asarray(rows), images)
    assert rows[np.array([], dtype=int)].shape == (0, 5, 5, 3)
    view = rows.take(np.arange(100, 200))
    np.testing.assert_array_equal(view[picks[picks < 100]], images[100:200][picks[picks < 100]])
    np.testing.assert_array_equal(view.take(np.array([9, 1]))[:], images[[109, 101]])
    with pytest.raises(IndexError):
        view[100]


def _resident_file_kb() -> int:
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line.split()[1] for line in status if line.startswith("RssFile:")))


def test_reading_every_row_leaves_the_process_memory_flat(tmp_path: Path) -> None:
    """Unlike a memory map, reading a 96 MB file row batch by row batch adds no resident pages to the process."""
    path = tmp_path / "big.npy"
    np.save(path, np.zeros((2048, 128, 128, 3), np.uint8))
    rows, before = ImageRows(path), _resident_file_kb()
    order = np.random.default_rng(0).permutation(len(rows))
    for start in range(0, len(rows), 64):
        assert rows[order[start : start + 64]].shape == (64, 128, 128, 3)
    assert _resident_file_kb() - before < 16 * 1024


def test_preprocess_writes_a_plain_npy_file(tmp_path: Path) -> None:
    """images.npy, written row by row, is byte for byte the file np.save writes for the same array."""
    write_digits(tmp_path / "raw")
    prepare(tmp_path / "raw", tmp_path / "prepared", DataParams(max_per_class=5, image_size=12))
    written = (tmp_path / "prepared" / "images.npy").read_bytes()
    prepared = Prepared.open(tmp_path / "prepared")
    np.save(tmp_path / "again.npy", np.asarray(prepared.images))
    assert written == (tmp_path / "again.npy").read_bytes()
    assert prepared.images.shape == (50, 12, 12, 3)
