"""Real TensorFlow training on a tiny slice of digits: determinism, exact resume after a kill, two-device
mirrored training, the triplet loss in the loop, and `dvc repro` through embed."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from embedlab.data.digits import write_digits
from embedlab.data.prepare import prepare
from embedlab.params import DataParams, parse_params

from .conftest import REPO

pytestmark = pytest.mark.slow

TINY = {
    "data": {"max_per_class": 14, "image_size": 32},
    "augment": {"rotation": 0.05, "zoom": 0.1},
    "backbones": {"mobilenetv2": None},
    "model": {"embedding_dim": 16},
    "train": {"epochs": 3, "batch_size": 32, "patience": 3},
}
TIMING_KEYS = {"wall_seconds", "train_images_per_second"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory laid out like the repo root after `dvc repro preprocess`, with tiny params."""
    root = tmp_path_factory.mktemp("train")
    params = parse_params(TINY)
    write_digits(root / "data" / "raw")
    prepare(root / "data" / "raw", root / "data" / "prepared", params.data)
    (root / "params.yaml").write_text(yaml.safe_dump(TINY))
    return root


def _train(root: Path, env: dict[str, str] | None = None, wait: bool = True) -> subprocess.Popen | dict:
    process = subprocess.Popen(
        [sys.executable, str(REPO / "stages" / "train.py"), "mobilenetv2"],
        cwd=root,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if not wait:
        return process
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return json.loads((root / "metrics" / "train" / "mobilenetv2.json").read_text())


def _quality(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


@pytest.fixture(scope="module")
def reference(workdir: Path) -> dict:
    """One uninterrupted run: the yardstick for determinism and resume."""
    return _train(workdir)


def _model_hashes(root: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted((root / "models").glob("mobilenetv2.*"))}


def test_same_params_same_metrics_and_outputs(workdir: Path, reference: dict) -> None:
    first = _model_hashes(workdir)
    again = _train(workdir)
    assert _quality(again) == _quality(reference)
    assert _model_hashes(workdir) == first  # a new process, yet byte-identical .keras and .weights.h5 files
    assert set(first) == {"mobilenetv2.keras", "mobilenetv2.weights.h5"}
    assert reference["epochs_run"] == 3 and 0 <= reference["test_accuracy"] <= 1
    assert (workdir / "models" / "mobilenetv2.keras").exists()
    history = (workdir / "dvclive" / "mobilenetv2" / "plots" / "metrics" / "val" / "loss.tsv").read_text()
    assert len(history.strip().splitlines()) == 1 + 3  # header + one row per epoch
    assert (workdir / "plots" / "train" / "mobilenetv2_loss.png").stat().st_size > 1000
    assert not (workdir / "models" / ".work").joinpath("mobilenetv2").exists()


def test_killed_run_resumes_to_the_same_result(workdir: Path, reference: dict) -> None:
    state = workdir / "models" / ".work" / "mobilenetv2" / "state.json"
    process = _train(workdir, wait=False)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if state.exists() and json.loads(state.read_text())["epoch"] >= 1:
            break
        if process.poll() is not None:
            pytest.fail("training finished before it could be interrupted")
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert json.loads(state.read_text())["epoch"] in (1, 2)
    resumed = _train(workdir)
    assert _quality(resumed) == _quality(reference)
    steps = (workdir / "dvclive" / "mobilenetv2" / "plots" / "metrics" / "train" / "loss.tsv").read_text()
    assert len(steps.strip().splitlines()) == 1 + 3  # the resumed log continues, no duplicated epochs


def test_mirrored_on_two_logical_cpus(workdir: Path, tmp_path: Path) -> None:
    script = (
        "import tensorflow as tf, sys, runpy;"
        "cpu = tf.config.list_physical_devices('CPU')[0];"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2);"
        f"sys.argv = ['train.py', 'mobilenetv2'];"
        f"runpy.run_path({str(REPO / 'stages' / 'train.py')!r}, run_name='__main__')"
    )
    params = {**TINY, "train": {**TINY["train"], "strategy": "mirrored", "epochs": 2}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data").symlink_to(workdir / "data")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((tmp_path / "metrics" / "train" / "mobilenetv2.json").read_text())
    assert metrics["devices"] == 2 and metrics["epochs_run"] == 2


def test_triplet_loss_trains(workdir: Path, tmp_path: Path) -> None:
    params = {**TINY, "train": {**TINY["train"], "loss": "softmax+triplet", "triplet_mining": "semi_hard", "epochs": 2}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data").symlink_to(workdir / "data")
    metrics = _train(tmp_path)
    assert metrics["epochs_run"] == 2 and np.isfinite(metrics["best_val_loss"])


def test_unknown_backbone_is_rejected() -> None:
    from embedlab.params import ParamsError

    with pytest.raises(ParamsError, match=r"backbones\.alexnet: unknown name"):
        parse_params({"backbones": {"alexnet": None}})
    assert DataParams().image_size == 32
