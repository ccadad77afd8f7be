"""End to end: the data stages through real `dvc repro` in a fresh copy of the repository."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedlab.data.prepared import Prepared

from ..conftest import copy_repo, dvc, set_params


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.mark.slow
def test_repro_preprocess_then_noop_then_precise_rerun(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path / "repo")
    set_params(repo, data__max_per_class=12, data__image_size=16)

    first = dvc("repro", "preprocess", cwd=repo)
    assert _ran(first.stdout) == {"download", "preprocess"}
    prepared = Prepared.open(repo / "data" / "prepared")
    assert prepared.images.shape == (120, 16, 16, 3)
    assert prepared.images.dtype == np.uint8
    assert prepared.index["id"].is_unique
    report = json.loads((repo / "reports" / "data.json").read_text())
    assert report == {"images": {"train": 70, "val": 10, "test": 40, "total": 120}, "classes": 10, "skipped": 0}
    per_class = json.loads((repo / "data" / "prepared" / "report.json").read_text())["per_class"]
    assert len(per_class) == 10 and all(sum(counts.values()) == 12 for counts in per_class.values())

    again = dvc("repro", "preprocess", cwd=repo)
    assert _ran(again.stdout) == set()

    set_params(repo, data__image_size=20)
    resized = dvc("repro", "preprocess", cwd=repo)
    assert _ran(resized.stdout) == {"preprocess"}
    assert Prepared.open(repo / "data" / "prepared").images.shape == (120, 20, 20, 3)


def test_splits_are_seeded_and_stratified(tmp_path: Path) -> None:
    from embedlab.core.params import DataParams
    from embedlab.data.prepare import assign_splits

    labels = np.repeat(np.arange(4), 50)
    raw = np.full(len(labels), "")
    params = DataParams(test_fraction=0.2, val_fraction=0.25, seed=3)
    first, second = assign_splits(raw, labels, params), assign_splits(raw, labels, params)
    np.testing.assert_array_equal(first, second)
    for label in range(4):
        mine = first[labels == label]
        assert (mine == "test").sum() == 10 and (mine == "val").sum() == 10 and (mine == "train").sum() == 30
    other = assign_splits(raw, labels, DataParams(test_fraction=0.2, val_fraction=0.25, seed=4))
    assert not np.array_equal(first, other)
