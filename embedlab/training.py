"""Fine-tuning one backbone into an embedding model: phases, resume, early stopping, logging.

Why the loop calls ``fit`` once per epoch instead of once per run: Keras' ``BackupAndRestore`` restores weights and
optimizer state but not the data order, the augmentation/dropout random state or early-stopping state, so a resumed
run drifts from an uninterrupted one. Here every epoch's batches and random draws depend only on ``(seed, epoch)``,
and the checkpoint written after each finished epoch (``latest.weights.h5`` with optimizer state, plus
``state.json`` with the epoch, early-stopping counters and best score) is everything needed to continue: a killed
run resumes from its last finished epoch and ends with the same metrics as one that was never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from embedlab.errors import UserError
from embedlab.params import AugmentParams, ModelParams, TrainParams

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """What must survive a kill: written atomically after every finished epoch."""

    fingerprint: str
    epoch: int = 0  # epochs finished
    best_val_loss: float = float("inf")
    best_epoch: int = -1
    wait: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class TrainResult:
    metrics: dict[str, float | int]
    history: list[dict[str, float]]


def configure_determinism(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def make_strategy(name: str):
    """``auto``: all local GPUs when there are several, else the default; ``mirrored``: every local GPU (or every
    logical CPU when there is none); ``multiworker``: the cluster described by ``TF_CONFIG``."""
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise UserError("train.strategy=multiworker needs TF_CONFIG describing the cluster (see README)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(gpus or [d.name for d in tf.config.list_logical_devices("CPU")])
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy(gpus)
    return tf.distribute.get_strategy()


def _set_mixed_precision(setting: str) -> bool:
    import keras
    import tensorflow as tf

    enabled = setting == "on" or (setting == "auto" and bool(tf.config.list_physical_devices("GPU")))
    keras.mixed_precision.set_global_policy("mixed_float16" if enabled else "float32")
    return enabled


def _optimizer(train: TrainParams, lr: float):
    import keras

    if train.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=train.weight_decay or None)
    if train.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(lr, weight_decay=train.weight_decay or None)
    if train.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=train.weight_decay or 0.004)
    return keras.optimizers.Adam(lr, weight_decay=train.weight_decay or None)


def _set_trainable(backbone, unfreeze: str | int, pretrained: bool) -> None:
    """Unfreeze the top ``unfreeze`` layers (or all); BatchNorm of a pretrained backbone stays in inference mode."""
    import keras

    backbone.trainable = True
    layers = backbone.layers
    cut = 0 if unfreeze == "all" else max(len(layers) - int(unfreeze), 0)
    for i, layer in enumerate(layers):
        frozen_bn = pretrained and isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = i >= cut and not frozen_bn


def _reseed(model, seed: int, epoch: int) -> None:
    """Give every random layer (augmentation, dropout) a state that depends only on (seed, epoch)."""
    states = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    for i, variable in enumerate(states):
        variable.assign(np.array([seed * 100_003 + epoch * 1_009 + i, 0], dtype=variable.dtype))


def recalibrate_batchnorm(model, images: np.ndarray, batch_size: int, max_batches: int = 8) -> None:
    """Set trainable BatchNorm moving statistics to the average over a few training batches with the final weights.

    From random init on a small dataset the moving averages lag far behind the fast-changing weights, so the model
    is fine in training mode and near chance in inference mode. Averaging fresh batch statistics (momentum
    k/(k+1) on batch k) fixes that for the cost of a few forward passes.
    """
    import keras

    layers = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    if not layers:
        return
    original = [layer.momentum for layer in layers]
    try:
        for k, start in enumerate(range(0, min(len(images), batch_size * max_batches), batch_size)):
            for layer in layers:
                layer.momentum = k / (k + 1)
            model(images[start : start + batch_size], training=True)  # eager: the momentum is read per call
    finally:
        for layer, momentum in zip(layers, original, strict=True):
            layer.momentum = momentum


def fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Trainer:
    """Train ``name`` on ``data/prepared`` and write the model, logs, metrics and curves."""

    def __init__(
        self,
        name: str,
        model_params: ModelParams,
        train_params: TrainParams,
        augment: AugmentParams,
        prepared_dir: str | Path = "data/prepared",
        models_dir: str | Path = "models",
        live_dir: str | Path | None = None,
    ) -> None:
        self.name, self.model_params, self.train_params, self.augment = name, model_params, train_params, augment
        self.prepared_dir = Path(prepared_dir)
        self.models_dir = Path(models_dir)
        self.work = self.models_dir / ".work" / name
        self.live_dir = Path(live_dir) if live_dir else Path("dvclive") / name

    # -- data ---------------------------------------------------------------------------------------------------
    def _load_data(self):
        from embedlab.data.prepare import Prepared

        data = Prepared.open(self.prepared_dir)
        splits = {s: data.split(s) for s in ("train", "val", "test")}
        if len(splits["train"]) == 0 or len(splits["val"]) == 0:
            raise UserError("data/prepared has no train or no val images; lower data.val_fraction or add images")
        arrays = {s: (np.asarray(data.images[rows]), data.labels[rows]) for s, rows in splits.items()}
        return data, arrays

    def _dataset(self, images, labels, num_classes: int, order=None, augment=None):
        import tensorflow as tf

        if order is not None:
            images, labels = images[order], labels[order]
        onehot = np.eye(num_classes, dtype="float32")[labels]
        ds = tf.data.Dataset.from_tensor_slices((images, {"logits": onehot, "embedding": labels.astype("int32")}))
        ds = ds.batch(self.train_params.batch_size, drop_remainder=False)
        if augment is not None and len(augment.layers):
            ds = ds.map(
                lambda x, y: (
                    tf.cast(tf.clip_by_value(tf.round(augment(tf.cast(x, "float32"), training=True)), 0, 255), "uint8"),
                    y,
                ),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
        return ds.prefetch(tf.data.AUTOTUNE)

    def _epoch_order(self, labels: np.ndarray, epoch: int) -> np.ndarray:
        from embedlab.sampling import class_balanced_order, shuffled_order

        seed = self.train_params.seed
        if "triplet" in self.train_params.loss:
            return class_balanced_order(labels, self.train_params.batch_size, seed, epoch)
        return shuffled_order(len(labels), seed, epoch)

    # -- model --------------------------------------------------------------------------------------------------
    def _compile(self, models, lr: float) -> None:
        import keras

        from embedlab.losses import TripletLoss

        train = self.train_params
        losses = {
            "logits": keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=train.label_smoothing)
        }
        weights = {"logits": 1.0}
        if "triplet" in train.loss:
            losses["embedding"] = TripletLoss(train.triplet_mining, train.triplet_margin)
            weights["embedding"] = train.triplet_weight
        models.trainer.compile(
            optimizer=_optimizer(train, lr),
            loss=losses,
            loss_weights=weights,
            metrics={"logits": [keras.metrics.CategoricalAccuracy(name="accuracy")]},
            jit_compile=False,
        )

    # -- the run ------------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        import keras

        from embedlab.augment import build_augmentation
        from embedlab.models import build_models, save_embedding_model

        train, model_params = self.train_params, self.model_params
        configure_determinism(train.seed)
        mixed = _set_mixed_precision(train.mixed_precision)
        data, arrays = self._load_data()
        num_classes = len(data.class_names)
        pretrained = model_params.weights is not None
        # The checkpoint is only valid for the same data: the index (ids, splits) and how the images were made.
        data_stamp = [(self.prepared_dir / name).read_text() for name in ("index.csv", "info.json")]
        state_file = self.work / "state.json"
        fp = fingerprint(
            self.name, model_params.model_dump(), train.model_dump(), self.augment.model_dump(), data_stamp
        )
        state = self._load_state(state_file, fp)

        strategy = make_strategy(train.strategy)
        with strategy.scope():
            models = build_models(
                self.name,
                data.image_size,
                num_classes,
                embedding_dim=model_params.embedding_dim,
                dropout=train.dropout,
                weights=model_params.weights,
                input_size=model_params.input_size,
                # Random init: BatchNorm must learn its statistics from ~a thousand images; momentum 0.99 would
                # still remember the initial (0, 1) statistics after hundreds of steps and wreck evaluation.
                bn_momentum=None if pretrained else 0.9,
                probe_head=train.loss == "triplet",
            )
        augment = build_augmentation(self.augment, seed=train.seed)
        phases = []
        if train.warmup_epochs:
            phases.append(("warmup", 0, train.warmup_epochs, train.lr, 0))
        finetune_lr = train.lr * train.finetune_factor if train.warmup_epochs else train.lr
        phases.append(("finetune", train.warmup_epochs, train.epochs, finetune_lr, train.unfreeze))

        from dvclive import Live

        resuming = state.epoch > 0
        if not resuming and self.live_dir.exists():
            shutil.rmtree(self.live_dir)
        live = Live(dir=str(self.live_dir), dvcyaml=False, save_dvc_exp=False, resume=resuming, report=None)
        started = time.perf_counter()
        train_seconds, train_images = 0.0, 0
        x_train, y_train = arrays["train"]
        val_ds = self._dataset(*arrays["val"], num_classes)
        for phase, first, last, lr, unfreeze in phases:
            if state.stopped_early or state.epoch >= last:
                continue
            with strategy.scope():
                _set_trainable(models.backbone, unfreeze, pretrained)
                self._compile(models, lr)
                if state.epoch > first:  # resume mid-phase: weights and optimizer state of the last epoch
                    models.trainer.optimizer.build(models.trainer.trainable_variables)
                    models.trainer.load_weights(self.work / "latest.weights.h5")
                elif state.epoch > 0:  # a new phase after a resume: the last epoch's weights, a fresh optimizer
                    _load_model_only(models.trainer, self.work / "latest.weights.h5")
            for epoch in range(max(first, state.epoch), last):
                _reseed(models.trainer, train.seed, epoch)
                _reseed(augment, train.seed, epoch)
                order = self._epoch_order(y_train, epoch)
                tick = time.perf_counter()
                fit = models.trainer.fit(  # the dataset is already in this epoch's seeded order
                    self._dataset(x_train, y_train, num_classes, order, augment), epochs=1, shuffle=False, verbose=0
                )
                train_seconds += time.perf_counter() - tick
                train_images += len(order)
                recalibrate_batchnorm(models.trainer, x_train[order[: 8 * train.batch_size]], train.batch_size)
                evaluation = models.trainer.evaluate(val_ds, verbose=0, return_dict=True)
                row = {
                    "epoch": epoch,
                    "train/loss": float(fit.history["loss"][-1]),
                    "train/accuracy": float(fit.history["logits_accuracy"][-1]),
                    "val/loss": float(evaluation["loss"]),
                    "val/accuracy": float(evaluation["logits_accuracy"]),
                    "lr": float(lr),
                }
                self._log(live, row)
                state.history.append(row)
                state.epoch = epoch + 1
                if row["val/loss"] < state.best_val_loss - 1e-6:
                    state.best_val_loss, state.best_epoch, state.wait = row["val/loss"], epoch, 0
                    _save_atomic(self.work / "best.npz", lambda tmp: np.savez(tmp, *models.trainer.get_weights()))
                else:
                    state.wait += 1
                state.stopped_early = state.wait >= train.patience
                _save_atomic(self.work / "latest.weights.h5", models.trainer.save_weights)
                self._save_state(state_file, state)
                log.info("%s %s epoch %d: %s", self.name, phase, epoch + 1, _fmt(row))
                if state.stopped_early:
                    log.info("%s: early stop, no val_loss improvement for %d epochs", self.name, train.patience)
                    break
            if state.stopped_early:
                break
        live.end()

        with np.load(self.work / "best.npz") as best:
            models.trainer.set_weights([best[f"arr_{i}"] for i in range(len(best.files))])
        test_ds = self._dataset(*arrays["test"], num_classes)
        scores = {
            split: models.trainer.evaluate(ds, verbose=0, return_dict=True)["logits_accuracy"]
            for split, ds in (
                ("train", self._dataset(x_train, y_train, num_classes)),
                ("val", val_ds),
                ("test", test_ds),
            )
            if len(ds)
        }
        self.models_dir.mkdir(parents=True, exist_ok=True)
        save_embedding_model(models.embedding, self.models_dir / f"{self.name}.keras")
        _save_atomic(self.models_dir / f"{self.name}.weights.h5", models.trainer.save_weights)
        metrics: dict[str, float | int] = {
            "train_accuracy": round(float(scores.get("train", float("nan"))), 6),
            "val_accuracy": round(float(scores.get("val", float("nan"))), 6),
            "test_accuracy": round(float(scores.get("test", float("nan"))), 6),
            "best_val_loss": round(float(state.best_val_loss), 6),
            "best_epoch": state.best_epoch + 1,
            "epochs_run": state.epoch,
            "params": int(models.trainer.count_params()),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "train_images_per_second": round(train_images / train_seconds, 1) if train_seconds else 0.0,
            "mixed_precision": int(mixed),
            "devices": int(strategy.num_replicas_in_sync),
        }
        shutil.rmtree(self.work, ignore_errors=True)
        keras.backend.clear_session()
        return TrainResult(metrics, state.history)

    # -- helpers ------------------------------------------------------------------------------------------------
    @staticmethod
    def _log(live, row: dict[str, float]) -> None:
        for key, value in row.items():
            if key != "epoch":
                live.log_metric(key, value)
        live.next_step()

    @staticmethod
    def _load_state(path: Path, fp: str) -> RunState:
        if path.exists():
            saved = json.loads(path.read_text())
            if saved.get("fingerprint") == fp:
                log.info("resuming after epoch %d from %s", saved["epoch"], path.parent)
                return RunState(**saved)
            log.info("discarding checkpoint in %s: params or data changed", path.parent)
            shutil.rmtree(path.parent)
        return RunState(fingerprint=fp)

    @staticmethod
    def _save_state(path: Path, state: RunState) -> None:
        from embedlab.fsutil import write_json

        write_json(path, asdict(state))


def _save_atomic(path: Path, write) -> None:
    """Write via a temporary sibling so a kill mid-write never corrupts the last good checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp.{path.name}")
    write(str(tmp))
    os.replace(tmp, path)


def _load_model_only(model, path: Path) -> None:
    """Load a checkpoint's model variables; its optimizer state does not fit the new phase's optimizer."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(path)


def _fmt(row: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch")


def draw_curves(history: list[dict[str, float]], name: str, out: str | Path) -> None:
    """The loss and accuracy curves, train vs val, as a PNG (the DVC plots show the same data interactively)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] + 1 for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            ax.plot(epochs, [row[f"{split}/{metric}"] for row in history], style, label=split, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{name}: training curves")
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
