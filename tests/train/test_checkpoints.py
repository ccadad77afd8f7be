"""The pieces of the training loop that make resume exact and epochs cheap: the checkpoint commit order, the
compiled BatchNorm recalibration and the per-epoch stopwatch."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from embedlab.train.batchnorm import BatchNormRecalibrator
from embedlab.train.checkpoints import CheckpointStore, RunState
from embedlab.train.stopwatch import StopWatch


def _tiny_model() -> keras.Model:
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn")(inputs)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="mse")
    return model


def test_recalibration_sets_the_average_of_the_batch_statistics() -> None:
    model = _tiny_model()
    images = np.random.default_rng(0).normal(3.0, 2.0, size=(12, 4, 4, 3)).astype("float32")
    images[4:8] += 5.0  # batches with different statistics: an average, not the last batch, must come out
    BatchNormRecalibrator(model)(images, batch_size=4)
    batches = images.reshape(3, 4, -1, 3)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), batches.mean(axis=(1, 2)).mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), batches.var(axis=(1, 2)).mean(axis=0), rtol=1e-4)
    assert bn.momentum == 0.9  # restored for training


def _assert_same(left: list[np.ndarray], right: list[np.ndarray]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_commits_with_state_json_and_survives_a_torn_save(tmp_path: Path) -> None:
    model = _tiny_model()
    model.fit(np.ones((4, 4, 4, 3), "float32"), np.zeros((4, 2), "float32"), epochs=1, verbose=0)  # optimizer state
    best = [w + 1.0 for w in model.get_weights()]  # the best epoch's weights differ from the current ones
    store = CheckpointStore(tmp_path / "work")
    state = store.load("fp")
    state.epoch, state.best_epoch = 1, 0
    store.save(state, model, best)
    assert sorted(p.name for p in store.folder.iterdir()) == ["best-0001.npz", "epoch-0001.weights.h5", "state.json"]

    # A kill after the next epoch's weights were written but before state.json: the old checkpoint still loads.
    (store.folder / "epoch-0002.weights.h5").write_bytes(b"torn")
    resumed = store.load("fp")
    assert (resumed.epoch, resumed.weights_file) == (1, "epoch-0001.weights.h5")
    fresh = _tiny_model()  # another process's model: other initial weights, no optimizer state yet
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(store.weights_path(resumed))
    _assert_same(fresh.get_weights(), model.get_weights())
    _assert_same(fresh.optimizer.variables, model.optimizer.variables)  # Adam's moments and step count too
    _assert_same(store.best_weights(resumed), best)

    resumed.epoch = 2
    store.save(resumed, model, best)  # the next commit sweeps the torn file
    assert sorted(p.name for p in store.folder.iterdir()) == ["best-0001.npz", "epoch-0002.weights.h5", "state.json"]
    assert json.loads(store.state_file.read_text())["epoch"] == 2


def test_checkpoint_of_other_params_or_missing_files_is_discarded(tmp_path: Path) -> None:
    model = _tiny_model()
    store = CheckpointStore(tmp_path / "work")
    state = RunState(fingerprint="fp", epoch=1, best_epoch=0)
    store.save(state, model, model.get_weights())
    assert store.load("other").epoch == 0 and not store.folder.exists()
    store.save(state, model, model.get_weights())
    (store.folder / state.weights_file).unlink()
    assert store.load("fp").epoch == 0


def test_stopwatch_rates_skip_the_first_epoch() -> None:
    clock = StopWatch()
    clock.epochs = [{"fit": 10.0, "validate": 1.0, "images": 100, "cpu": 11.0}, {"fit": 1.0, "images": 100, "cpu": 2}]
    assert clock.images_per_second(("fit",), skip=1) == 100.0
    assert clock.images_per_second() == round(200 / 12, 1)
    assert clock.cores_used(skip=1) == 2.0


def test_stopwatch_books_the_untimed_rest_of_an_epoch_as_other() -> None:
    clock = StopWatch()
    clock.start_epoch()
    with clock("fit"):
        time.sleep(0.05)
    time.sleep(0.1)  # logging, bookkeeping: in no named part
    clock.end_epoch(10)
    epoch = clock.epochs[0]
    assert 0.05 <= epoch["fit"] < 0.1 and epoch["other"] >= 0.1
    assert clock.images_per_second() == round(10 / (epoch["fit"] + epoch["other"]), 1)


@pytest.mark.parametrize("level", ["3", "0"])
def test_startup_filter_drops_only_the_known_noise(level: str) -> None:
    script = (
        "import os, re; from embedlab.core.runtime import _STARTUP_NOISE, _filtered_stderr\n"
        "with _filtered_stderr(_STARTUP_NOISE):\n"
        "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called '\n"
        "                b'are written to STDERR\\n')\n"
        "    os.write(2, b'I0000 00:00:1795625224.266712    2547 port.cc:153] oneDNN custom operations are on.\\n')\n"
        "    os.write(2, b'E0000 00:00:1795625224.266712    2547 real.cc:1] a real error\\n')\n"
        "import tensorflow\n"
    )
    env = {"TF_CPP_MIN_LOG_LEVEL": level, "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "E0000 00:00:1795625224.266712    2547 real.cc:1] a real error"
    if level == "3":  # the project's default: TensorFlow's own import noise is gone too
        assert lines == lines[:1]
    else:  # TF_CPP_MIN_LOG_LEVEL=0 asks for everything: the import is not filtered
        assert any("port.cc" in line for line in lines[1:])
