"""Real TensorFlow training on a tiny slice of digits: determinism, exact resume after a kill, early stopping and the
best epoch restored, two-device mirrored training, triplet-only training; and the fast parts of the loop (the training
budget, the data pipeline, flip-averaged scoring) by value."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from embedlab.augment.test_time import TestTimeViews, mirror
from embedlab.core.params import DataParams, parse_params
from embedlab.data.download.digits import write_digits
from embedlab.data.prepare import prepare

from ..conftest import REPO

slow = pytest.mark.slow  # real training: the quick loop (-m "not slow") leaves these out


TINY = {
    "data": {"max_per_class": 14, "image_size": 32},
    "augment": {"rotation": 0.05, "zoom": 0.1},
    "backbones": {"mobilenetv2": None},
    "model": {"embedding_dim": 16},
    "train": {"epochs": 3, "batch_size": 32, "patience": 3, "checkpoint_interval": 0},
}


def _is_timing(key: str) -> bool:
    return key.startswith("seconds_") or key in {
        "wall_seconds", "train_images_per_second", "epoch_images_per_second", "cpu_cores_used"
    }  # fmt: skip


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
    (root / "train.log").write_text(output)
    headline = json.loads((root / "metrics" / "train" / "mobilenetv2.json").read_text())
    metrics = json.loads((root / "reports" / "train" / "mobilenetv2.json").read_text())
    assert headline == {"test_accuracy": metrics["test_accuracy"]}  # what `dvc metrics show` lists
    return metrics


def _quality(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not _is_timing(k)}


@pytest.fixture(scope="module")
def reference(workdir: Path) -> dict:
    """One uninterrupted run: the yardstick for determinism and resume."""
    return _train(workdir)


def _model_hashes(root: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted((root / "models").glob("mobilenetv2.*"))}


@slow
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


@slow
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
    done = json.loads(state.read_text())["epoch"]
    assert done in (1, 2)
    resumed = _train(workdir)
    assert _quality(resumed) == _quality(reference)
    output = (workdir / "train.log").read_text()
    assert f"resuming after epoch {done}" in output
    trained = [line for line in output.splitlines() if "mobilenetv2 finetune epoch" in line]
    assert [line.split("epoch ")[1].split(":")[0] for line in trained] == [str(e) for e in range(done + 1, 4)]
    steps = (workdir / "dvclive" / "mobilenetv2" / "plots" / "metrics" / "train" / "loss.tsv").read_text()
    assert len(steps.strip().splitlines()) == 1 + 3  # the resumed log continues, no duplicated epochs


WARMUP = {**TINY, "train": {**TINY["train"], "warmup_epochs": 1, "lr": 0.002}}


def _kill_after_first_epoch(root: Path) -> int:
    """Start a run, SIGKILL it as soon as its first checkpoint is committed; return the epochs it had finished."""
    state = root / "models" / ".work" / "mobilenetv2" / "state.json"
    process = _train(root, wait=False)
    deadline = time.monotonic() + 300
    while not (state.exists() and json.loads(state.read_text())["epoch"] >= 1):
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail("training finished (or hung) before it could be interrupted")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return json.loads(state.read_text())["epoch"]


def _epochs_trained(root: Path) -> list[tuple[str, int]]:
    lines = (root / "train.log").read_text().splitlines()
    logged = [line.split() for line in lines if " warmup epoch " in line or " finetune epoch " in line]
    return [(words[3], int(words[5].rstrip(":"))) for words in logged]  # INFO logger: name phase epoch N:


@slow
def test_resume_across_the_warmup_boundary_and_after_a_discarded_checkpoint(tmp_path: Path) -> None:
    """A checkpoint from other params is discarded and a whole run follows (the store then starts from a fresh state
    with its folder removed: test_checkpoints.py); a checkpoint made at the end of the frozen warm-up resumes into
    the fine-tune phase and ends exactly where that whole run ended."""
    root = tmp_path / "warmup"
    write_digits(root / "data" / "raw")
    prepare(root / "data" / "raw", root / "data" / "prepared", parse_params(WARMUP).data)
    (root / "params.yaml").write_text(yaml.safe_dump(TINY))  # other params: a checkpoint that must not be used
    _kill_after_first_epoch(root)
    (root / "params.yaml").write_text(yaml.safe_dump(WARMUP))
    reference = _train(root)
    assert "discarding checkpoint" in (root / "train.log").read_text()
    assert _epochs_trained(root) == [("warmup", 1), ("finetune", 2), ("finetune", 3)]

    assert _kill_after_first_epoch(root) == 1  # the warm-up's only epoch: the resumed run starts a new phase
    resumed = _train(root)
    assert "resuming after epoch 1" in (root / "train.log").read_text()
    assert _epochs_trained(root) == [("finetune", 2), ("finetune", 3)]
    assert _quality(resumed) == _quality(reference)
    rows = (root / "dvclive" / "mobilenetv2" / "plots" / "metrics" / "train" / "loss.tsv").read_text()
    assert len(rows.strip().splitlines()) == 1 + 3


@slow
def test_stage_output_has_no_tensorflow_startup_noise(workdir: Path, reference: dict) -> None:
    output = (workdir / "train.log").read_text()
    for noise in ("absl::InitializeLog", "port.cc", "cudart_stub", "cpu_feature_guard"):
        assert noise not in output, output
    assert "mobilenetv2 finetune epoch 3" in output  # our own log still shows


@slow
def test_timings_say_where_the_epoch_time_goes(reference: dict) -> None:
    parts = sum(reference[f"seconds_{part}"] for part in ("fit", "recalibrate", "validate", "checkpoint", "other"))
    assert 0 < reference["seconds_fit"] <= parts < reference["wall_seconds"]
    assert reference["seconds_checkpoint"] > 0  # checkpoint_interval 0: after every epoch but the last
    assert 0 < reference["epoch_images_per_second"] <= reference["train_images_per_second"]
    assert 0 < reference["cpu_cores_used"] <= os.cpu_count() + 0.5


@slow
@pytest.mark.parametrize(("user_setting", "expected"), [(None, "1 True"), ("0", "0 False")])
def test_onednn_is_on_unless_the_user_turns_it_off(user_setting: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if user_setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = user_setting
    script = (
        "import os, embedlab.train.loop; from tensorflow.python.util import _pywrap_util_port as port;"
        "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], port.IsMklEnabled())"
    )
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected
    assert result.stderr == ""  # and not one line of start-up noise


@slow
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
    metrics = json.loads((tmp_path / "reports" / "train" / "mobilenetv2.json").read_text())
    assert metrics["devices"] == 2 and metrics["epochs_run"] == 2


def _fit_smallnet(root: Path, work: Path, smallnet: dict, augment: dict = TINY["augment"], **train: object):
    """Train smallnet in this process (no stage around it) on the tiny digits; return the result and the params."""
    from embedlab.train.loop import Trainer

    raw = {**TINY, "augment": augment, "train": {**TINY["train"], **train},
           "backbones": {"smallnet": {"dropout": 0.0, **smallnet}}}  # fmt: skip
    params = parse_params(raw)
    model_params, train_params = params.for_backbone("smallnet")
    trainer = Trainer(
        "smallnet", model_params, train_params, params.augment, prepared_dir=root / "data" / "prepared",
        work_dir=work / "checkpoints", live_dir=work / "live",
    )  # fmt: skip
    return trainer.run(), train_params


def _map_at_5(root: Path, vectors: np.ndarray | None) -> float:
    """mAP@5 of the test split against train (the evaluate stage's protocol); ``None``: raw pixels."""
    from embedlab.core.params import EvaluateParams
    from embedlab.data.prepared import Prepared
    from embedlab.embed.embeddings import EmbeddingSet, raw_pixel_set
    from embedlab.retrieval.evaluation import evaluate_model

    raw = raw_pixel_set(Prepared.open(root / "data" / "prepared"))
    emb = raw if vectors is None else EmbeddingSet(vectors, raw.ids, raw.labels, raw.splits, raw.class_names)
    return evaluate_model(emb, EvaluateParams(k=5))[0]["map@5"]


@slow
def test_early_stopping_keeps_the_best_epoch_and_a_run_resumed_after_it_stops_alike(
    workdir: Path, tmp_path: Path
) -> None:
    from embedlab.train.data import TrainingData

    smallnet = {"epochs": 20, "optimizer": "sgd", "lr": 0.4}
    result, train = _fit_smallnet(workdir, tmp_path / "a", smallnet, patience=2, checkpoint_interval=0)
    losses = [row["val/loss"] for row in result.history]
    best = int(np.argmin(losses))
    metrics = result.metrics
    # Stopped `patience` epochs after the best one, well before train.epochs, and says which epoch it kept.
    assert metrics["epochs_run"] == len(losses) == best + 1 + 2 < 20
    assert metrics["best_epoch"] == best + 1 and metrics["best_val_loss"] == pytest.approx(losses[best], abs=1e-6)
    # The returned model holds the best epoch's weights, not the last epoch's: its val loss is the best one.
    val = TrainingData.load(workdir / "data" / "prepared", train).dataset("val")
    scored = result.trainer.evaluate(val, verbose=0, return_dict=True)
    assert scored["loss"] == pytest.approx(losses[best], abs=1e-4) and abs(losses[-1] - losses[best]) > 1e-3
    assert metrics["val_accuracy"] == pytest.approx(result.history[best]["val/accuracy"], abs=1e-6)

    # checkpoint_interval 0: a checkpoint after every epoch but the last. A run restarted on that folder (as after a
    # kill between the last checkpoint and the outputs) trains only the last epoch and stops exactly alike.
    state = json.loads((tmp_path / "a" / "checkpoints" / "state.json").read_text())
    assert (state["epoch"], state["best_epoch"], state["stopped_early"]) == (len(losses) - 1, best, False)
    shutil.copytree(tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints")
    resumed, _ = _fit_smallnet(workdir, tmp_path / "b", smallnet, patience=2, checkpoint_interval=0)
    assert resumed.history == result.history and _quality(resumed.metrics) == _quality(metrics)
    assert metrics["seconds_checkpoint"] > 0 and resumed.metrics["seconds_checkpoint"] == 0  # its only epoch: last

    # A time-based interval longer than the run: no checkpoint is written, and the run is the same.
    untouched, _ = _fit_smallnet(workdir, tmp_path / "c", smallnet, patience=2, checkpoint_interval=3600)
    assert not (tmp_path / "c" / "checkpoints").exists() and untouched.metrics["seconds_checkpoint"] == 0
    assert untouched.history == result.history


@slow
@pytest.mark.parametrize("loss", ["triplet", "supcon"])
def test_a_metric_loss_alone_learns_an_embedding_that_beats_raw_pixels(
    workdir: Path, tmp_path: Path, loss: str
) -> None:
    """No softmax term: the metric loss alone must move the embedding (an untrained smallnet scores ~0.1). Ten
    epochs of the triplet loss: over train.seed 0, 1, 2 and 42 they scored 0.81-0.93 against raw pixels' 0.75 (six
    scored 0.80-0.88)."""
    from embedlab.data.prepared import Prepared
    from embedlab.embed.embeddings import embed_images

    smallnet = {"epochs": 10, "optimizer": "sgd", "lr": 0.2}
    result, _ = _fit_smallnet(workdir, tmp_path, smallnet, augment={}, loss=loss, patience=10)
    assert result.history[-1]["train/loss"] < result.history[0]["train/loss"]
    images = Prepared.open(workdir / "data" / "prepared").images
    trained, pixels = (
        _map_at_5(workdir, embed_images(result.embedding, images, progress=False)),
        _map_at_5(workdir, None),
    )
    assert trained > pixels + 0.05, (trained, pixels)


def test_the_training_budget_cuts_the_train_split_only(workdir: Path) -> None:
    """``max_per_class`` is a class-balanced subset of train; val and test are scored whole."""
    from embedlab.core.params import TrainParams
    from embedlab.data.prepared import Prepared
    from embedlab.train.data import TrainingData

    prepared = Prepared.open(workdir / "data" / "prepared")
    data = TrainingData.load(workdir / "data" / "prepared", TrainParams(max_per_class=3))
    train_images, train_labels = data.splits["train"]
    assert np.bincount(train_labels).tolist() == [3] * 10 and data.train_size == 30
    for split in ("val", "test"):
        images, labels = data.splits[split]
        rows = prepared.split(split)
        np.testing.assert_array_equal(images, prepared.images[rows])
        np.testing.assert_array_equal(labels, prepared.labels[rows])
    everything = TrainingData.load(workdir / "data" / "prepared", TrainParams())
    assert everything.train_size == len(prepared.split("train")) > 30
    train_rows = [bytes(image) for image in everything.splits["train"][0]]
    assert all(bytes(image) in train_rows for image in train_images)  # the subset is drawn from the train split


@slow
def test_a_diverging_run_stops_with_one_line_naming_the_lr(workdir: Path, tmp_path: Path) -> None:
    params = {**TINY, "train": {**TINY["train"], "optimizer": "sgd", "lr": 1e30, "epochs": 2}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data").symlink_to(workdir / "data")
    result = subprocess.run(
        [sys.executable, str(REPO / "stages" / "train.py"), "mobilenetv2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: train@mobilenetv2: validation loss is ")
    assert "lower train.lr (now 1e+30)" in result.stderr and "Traceback" not in result.stderr


def test_unknown_backbone_is_rejected() -> None:
    from embedlab.core.params import ParamsError

    with pytest.raises(ParamsError, match=r"backbones\.alexnet: unknown name"):
        parse_params({"backbones": {"alexnet": None}})
    assert DataParams().image_size == 32


def test_view_averaged_accuracy_matches_a_hand_computation() -> None:
    import keras

    from embedlab.core.params import TrainParams
    from embedlab.train.data import TrainingData

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (500, 4, 4, 3), dtype=np.uint8)
    kernel = rng.normal(size=(48, 3)).astype("float32")  # a linear classifier on the pixels: mirrors score otherwise
    inputs = keras.Input((4, 4, 3), dtype="uint8")
    flat = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    dense = keras.layers.Dense(3, use_bias=False)
    model = keras.Model(inputs, {"logits": dense(flat)})
    dense.set_weights([kernel])

    def logits(x: np.ndarray) -> np.ndarray:
        return (x.astype("float32") / 255).reshape(len(x), -1) @ kernel

    flips = logits(images) + logits(images[:, :, ::-1])
    averaged = np.argmax(flips, axis=1)
    labels = np.where(np.arange(500) < 300, averaged, rng.integers(0, 3, 500))  # 300 agree with the answer
    expected = np.mean(averaged == labels)
    data = TrainingData({"test": (images, labels)}, 3, 4, [], TrainParams())
    # the test can tell the left-right mirror from no mirror and from an upside-down one
    for other in (images, images[:, ::-1]):
        assert expected != np.mean(np.argmax(logits(images) + logits(other), axis=1) == labels)
    assert data.averaged_accuracy(model, "test", TestTimeViews.of(flip=True, translate=False)) == pytest.approx(
        expected
    )
    # flips and 1 px shifts (reflect-padded), at half weight, written out as airbench does
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    shifted = sum(logits(x) + logits(x[:, :, ::-1]) for x in (padded[:, :4, :4], padded[:, 2:, 2:]))
    level2 = np.mean(np.argmax(0.25 * flips + 0.125 * shifted, axis=1) == labels)
    assert level2 != expected  # the shifts change the answer of some images
    assert data.averaged_accuracy(model, "test", TestTimeViews.of(flip=True, translate=True)) == pytest.approx(level2)


@slow
def test_identity_init_reaches_the_model_the_train_stage_trains(workdir: Path, tmp_path: Path) -> None:
    from embedlab.train.loop import Trainer

    smallnet = {"identity_init": True, "epochs": 1, "optimizer": "sgd", "lr": 1e-9, "dropout": 0.0}
    params = parse_params({**TINY, "backbones": {"smallnet": smallnet}})
    model_params, train_params = params.for_backbone("smallnet")
    result = Trainer(
        "smallnet", model_params, train_params, params.augment, prepared_dir=workdir / "data" / "prepared",
        work_dir=tmp_path / "work", live_dir=tmp_path / "live",
    ).run()  # fmt: skip
    conv = result.embedding.get_layer("smallnet_backbone").get_layer("block2_conv1")  # 64 -> 256 channels
    np.testing.assert_allclose(np.asarray(conv.kernel)[1, 1, :, :64], np.eye(64), atol=1e-4)  # lr 1e-9: as set


@pytest.mark.parametrize(
    "backbone", ["smallnet", pytest.param("vgg16", marks=slow), pytest.param("mobilenetv2", marks=slow)]
)
def test_train_seed_decides_every_initial_weight(workdir: Path, tmp_path: Path, backbone: str) -> None:
    """smallnet's seeded convolutions, VGG16's He re-init and every Keras default initialiser all follow
    ``train.seed``: the same seed gives the same first weights, another seed different ones in every kernel."""
    from embedlab.train.loop import Trainer

    def first_weights(seed: int) -> list[np.ndarray]:
        params = parse_params({**TINY, "backbones": {backbone: None}, "train": {**TINY["train"], "seed": seed}})
        model_params, train_params = params.for_backbone(backbone)
        run = Trainer(
            backbone, model_params, train_params, params.augment, prepared_dir=workdir / "data" / "prepared",
            work_dir=tmp_path / f"work{seed}", live_dir=tmp_path / f"live{seed}",
        ).build()  # fmt: skip
        run.log.end()
        return run.models.trainer.get_weights()

    first, again, other = first_weights(0), first_weights(0), first_weights(1)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    random = [(a, c) for a, c in zip(first, other, strict=True) if a.std() > 0]  # not the constant biases, BN stats
    assert len(random) >= 4 and all(not np.array_equal(a, c) for a, c in random)


@pytest.mark.parametrize("stored", ["file", "array"])
def test_one_training_pipeline_serves_every_epochs_order(stored: str, tmp_path: Path) -> None:
    """The batches are the order's rows, read from the prepared file (the stage) or an array (tests) alike."""
    from embedlab.core.params import TrainParams
    from embedlab.data.prepared import ImageRows
    from embedlab.train.data import TrainingData

    images = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)  # image i is all i
    labels = np.arange(10) % 3
    np.save(tmp_path / "images.npy", images)
    source = ImageRows(tmp_path / "images.npy") if stored == "file" else images
    data = TrainingData({"train": (source, labels)}, 3, 2, [], TrainParams(batch_size=4))
    pipelines = []
    # two shuffles, then an order of another length (a triplet loss's class-balanced order repeats images)
    for order in (*(np.random.default_rng(epoch).permutation(10) for epoch in range(2)), np.arange(12) % 7):
        pipelines.append(data.train_dataset(order, None))
        batches = list(pipelines[-1].as_numpy_iterator())
        assert [len(x) for x, _ in batches] == [4, 4, len(order) - 8]
        np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), images[order])
        np.testing.assert_array_equal(np.concatenate([y["embedding"] for _, y in batches]), labels[order])
    assert pipelines[0] is pipelines[1]  # built (and its augmentation traced) once per order length
    pixels = np.random.default_rng(0).integers(0, 256, (10, 2, 2, 3), dtype=np.uint8)  # not mirror-symmetric
    np.save(tmp_path / "pixels.npy", pixels)
    scoring = data._make(ImageRows(tmp_path / "pixels.npy") if stored == "file" else pixels, labels, view=mirror)
    scored = np.concatenate([x for x, _ in scoring.as_numpy_iterator()])
    np.testing.assert_array_equal(scored, pixels[:, :, ::-1])  # scoring batches: every image, in order, mirrored
    # no autotuning thread for Keras to wait on when it deletes the iterator (embedlab.core.runtime.finish_pipeline)
    assert not pipelines[0].options().autotune.enabled and not scoring.options().autotune.enabled


def test_an_epochs_augmentation_depends_only_on_its_seed() -> None:
    from embedlab.augment.layers import build_augmentation
    from embedlab.core.params import AugmentParams, TrainParams
    from embedlab.train.data import TrainingData
    from embedlab.train.loop import _reseed

    images = np.random.default_rng(0).integers(0, 256, (1024, 8, 8, 3), dtype=np.uint8)
    data = TrainingData({"train": (images, np.arange(1024) % 4)}, 4, 8, [], TrainParams(batch_size=8))
    augment = build_augmentation(AugmentParams(flip="horizontal", rotation=0.1, shift=0.2), seed=1)
    epochs = []
    for _ in range(2):  # read as fast as tf.data can make batches: parallel augmentation would race here
        _reseed(augment, 1, 0)
        epochs.append(np.concatenate([x for x, _ in data.train_dataset(np.arange(1024), augment).as_numpy_iterator()]))
    assert not np.array_equal(epochs[0], images)
    np.testing.assert_array_equal(epochs[0], epochs[1])
