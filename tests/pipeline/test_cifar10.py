"""The CIFAR-10 recipe end to end on a small class-balanced slice of the real archive (skips without ../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ..conftest import CIFAR_JPEG, REPO, copy_repo, dvc

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CIFAR_JPEG.exists(), reason=f"{CIFAR_JPEG} not present (needs ../shared/data)"),
]


def test_cifar10_recipe_on_a_slice_trains_on_its_budget_and_evaluates_everything(tmp_path: Path) -> None:
    repo = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((REPO / "results" / "cifar10" / "params.yaml").read_text())
    params["data"].update(path=str(CIFAR_JPEG), max_per_class=40, val_fraction=0.1)  # 36 train + 4 val, 40 test a class
    smallnet = {**params["backbones"]["smallnet"], "epochs": 2, "batch_size": 64, "max_per_class": 20}
    params["backbones"] = {"smallnet": smallnet}
    params["cluster"]["tsne"]["sample"] = 20
    params["projector"]["max_points"] = 50
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    dvc("repro", cwd=repo)

    data = json.loads((repo / "reports" / "data.json").read_text())
    assert data == {"images": {"train": 360, "val": 40, "test": 400, "total": 800}, "classes": 10, "skipped": 0}
    train = json.loads((repo / "reports" / "train" / "smallnet.json").read_text())
    assert train["train_images"] == 200 and train["epochs_run"] == 2  # the budget: 20 per class
    for model in ("smallnet", "stack", "raw_pixels"):
        retrieval = json.loads((repo / "reports" / "retrieval" / f"{model}.json").read_text())
        # every test image queries the whole train+val gallery, whatever the training budget
        assert (retrieval["queries"], retrieval["gallery"]) == (400, 400), model
        assert 0.1 < retrieval["map@5"] <= 1.0
    report = json.loads((repo / "data" / "prepared" / "report.json").read_text())
    assert report["per_class"]["airplane"] == {"train": 36, "val": 4, "test": 40}
    stack = json.loads((repo / "reports" / "stack.json").read_text())
    assert stack["method"] == "select" and stack["weight_smallnet"] == 1.0
