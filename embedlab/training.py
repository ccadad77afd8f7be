"""Fine-tuning one backbone into an embedding model: phases, resume, early stopping, logging.

Why the loop calls ``fit`` once per epoch instead of once per run: Keras' ``BackupAndRestore`` restores weights and
optimizer state but not the data order, the augmentation/dropout random state or early-stopping state, so a resumed
run drifts from an uninterrupted one. Here every epoch's batches and random draws depend only on ``(seed, epoch)``
and a checkpoint (:mod:`embedlab.checkpoints`) holds everything else, so a killed run resumes from its last
checkpoint and ends with the same metrics as one that was never interrupted.

Why the per-epoch work is small: on a 2-core CPU a digits epoch trains in seconds, so validation, BatchNorm
recalibration and checkpoints would otherwise cost as much as training. Recalibration runs compiled, checkpoints
are written every ``train.checkpoint_interval`` seconds rather than every epoch (a resume replays the epochs after
the last one exactly), and the best weights are kept in memory. ``metrics/train/<bb>.json`` reports where the time
went.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedlab.checkpoints import CheckpointStore, RunState, fingerprint
from embedlab.errors import UserError
from embedlab.params import AugmentParams, ModelParams, TrainParams

log = logging.getLogger(__name__)


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


def _set_mixed_precision(setting: str) -> str:
    """Set Keras' global dtype policy; return its name.

    ``auto`` turns mixed precision on with a GPU only: on the CPU measured (AVX512_BF16 without AMX, README "CPU
    speed") bfloat16 paid off for VGG16 alone and cost DenseNet121 retrieval quality. ``on`` uses float16 on a GPU
    and bfloat16 on a CPU (CPUs have no fast float16 kernels).
    """
    import keras
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    policy = "float32"
    if setting == "on" or (setting == "auto" and gpu):
        policy = "mixed_float16" if gpu else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def lr_at(step, peak: float, total_steps: int, schedule: str, warmup: float):
    """The learning rate after ``step`` of a phase's ``total_steps``: the schedules' one definition, for a Python
    number or the optimizer's step counter (a tensor).

    ``triangular`` rises linearly from peak/10 to ``peak`` over the first ``warmup`` share of the steps, then falls
    linearly to 0 at the last step; ``cosine`` rises the same way, then follows a half cosine to 0. Ending at 0 is
    what lets a short from-scratch run settle into a minimum instead of bouncing around it.
    """
    from keras import ops

    if schedule == "constant":
        return peak
    if schedule not in ("triangular", "cosine"):
        raise ValueError(f"unknown train.lr_schedule {schedule!r}")
    step = ops.cast(step, "float32")
    rise = warmup * total_steps
    warm = peak * (0.1 + 0.9 * step / max(rise, 1e-9))
    left = ops.maximum(0.0, 1.0 - (step - rise) / max(total_steps - rise, 1.0))
    fall = peak * left if schedule == "triangular" else peak * 0.5 * (1.0 - ops.cos(math.pi * left))
    return ops.where(step < rise, warm, fall)


def _schedule(train: TrainParams, peak: float, total_steps: int):
    """``lr_at`` as a Keras schedule, driven by the optimizer's step counter (restored with a checkpoint)."""
    import keras

    if train.lr_schedule == "constant":
        return peak

    class PhaseSchedule(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return lr_at(step, peak, total_steps, train.lr_schedule, train.lr_warmup)

    return PhaseSchedule()


def _optimizer(train: TrainParams, lr: float, total_steps: int):
    import keras

    rate = _schedule(train, lr, total_steps)
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=0.9, nesterov=True, weight_decay=train.weight_decay or None)
    if train.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(rate, weight_decay=train.weight_decay or None)
    if train.optimizer == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=train.weight_decay or 0.004)
    return keras.optimizers.Adam(rate, weight_decay=train.weight_decay or None)


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


class BatchNormRecalibrator:
    """Set trainable BatchNorm moving statistics to the average of a few training batches' statistics.

    From random init on a small dataset the moving averages lag far behind the fast-changing weights, so the model
    is fine in training mode and near chance in inference mode. Averaging fresh batch statistics with the final
    weights fixes that for the cost of a few forward passes. The forward pass is compiled once per phase (the set of
    trainable layers is part of the graph): BatchNorm momentum is 0 while tracing, so each call leaves one batch's
    statistics in the moving variables, which are read back and averaged.
    """

    def __init__(self, model) -> None:
        import keras
        import tensorflow as tf

        self.layers = [
            layer
            for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
        ]
        self.model = model
        self._forward = tf.function(self._batch_statistics, reduce_retracing=True)

    def _batch_statistics(self, images):
        self.model(images, training=True)
        return [layer.moving_mean.value for layer in self.layers], [
            layer.moving_variance.value for layer in self.layers
        ]

    def __call__(self, images: np.ndarray, batch_size: int) -> None:
        if not self.layers or not len(images):
            return
        original = [layer.momentum for layer in self.layers]
        for layer in self.layers:
            layer.momentum = 0.0
        try:
            totals = None
            batches = range(0, len(images), batch_size)
            for start in batches:
                means, variances = self._forward(images[start : start + batch_size])
                stats = [np.asarray(v, dtype=np.float64) for v in (*means, *variances)]
                totals = stats if totals is None else [t + s for t, s in zip(totals, stats, strict=True)]
            assert totals is not None
            n = len(self.layers)
            for i, layer in enumerate(self.layers):
                layer.moving_mean.assign((totals[i] / len(batches)).astype(layer.moving_mean.dtype))
                layer.moving_variance.assign((totals[n + i] / len(batches)).astype(layer.moving_variance.dtype))
        finally:
            for layer, momentum in zip(self.layers, original, strict=True):
                layer.momentum = momentum


EPOCH_PARTS = ("fit", "recalibrate", "validate", "checkpoint")


class StopWatch:
    """Seconds per part of every epoch, so the metrics (and the benchmark) say where an epoch's time goes."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.epochs: list[dict[str, float]] = []

    @contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        start, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.current[part] += time.perf_counter() - start
            self.current["cpu"] += time.process_time() - cpu

    def end_epoch(self, images: int) -> None:
        self.epochs.append({**self.current, "images": images})
        self.current = defaultdict(float)

    def images_per_second(self, parts: tuple[str, ...] = EPOCH_PARTS, skip: int = 0) -> float:
        """Training images per second of the given parts, over the epochs after the first ``skip``."""
        epochs = self.epochs[skip:]
        seconds = sum(epoch.get(part, 0.0) for epoch in epochs for part in parts)
        return round(sum(epoch["images"] for epoch in epochs) / seconds, 1) if seconds else 0.0

    def cores_used(self, skip: int = 0) -> float:
        """Process CPU seconds per wall second over the epochs (2.0 = both cores of a 2-core machine busy)."""
        epochs = self.epochs[skip:]
        seconds = sum(epoch.get(part, 0.0) for epoch in epochs for part in EPOCH_PARTS)
        return round(sum(epoch.get("cpu", 0.0) for epoch in epochs) / seconds, 2) if seconds else 0.0


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
        self.checkpoints = CheckpointStore(self.models_dir / ".work" / name)
        self.live_dir = Path(live_dir) if live_dir else Path("dvclive") / name
        self.clock = StopWatch()

    # -- data ---------------------------------------------------------------------------------------------------
    def _load_data(self):
        from embedlab.data.prepare import Prepared
        from embedlab.sampling import class_balanced_subset

        data = Prepared.open(self.prepared_dir)
        splits = {s: data.split(s) for s in ("train", "val", "test")}
        if len(splits["train"]) == 0 or len(splits["val"]) == 0:
            raise UserError("data/prepared has no train or no val images; lower data.val_fraction or add images")
        # The training budget: a seeded class-balanced subset of the train split; val and test stay whole.
        train_rows = splits["train"]
        splits["train"] = train_rows[
            class_balanced_subset(data.labels[train_rows], self.train_params.max_per_class, self.train_params.seed)
        ]
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
    def _compile(self, models, lr: float, total_steps: int) -> None:
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
            optimizer=_optimizer(train, lr, total_steps),
            loss=losses,
            loss_weights=weights,
            metrics={"logits": [keras.metrics.CategoricalAccuracy(name="accuracy")]},
            jit_compile=False,
        )

    def _phases(self) -> list[tuple[str, int, int, float, str | int]]:
        """(name, first epoch, end epoch, lr, unfreeze) of the warm-up (if any) and fine-tune phases."""
        train = self.train_params
        phases: list[tuple[str, int, int, float, str | int]] = []
        if train.warmup_epochs:
            phases.append(("warmup", 0, train.warmup_epochs, train.lr, 0))
        finetune_lr = train.lr * train.finetune_factor if train.warmup_epochs else train.lr
        phases.append(("finetune", train.warmup_epochs, train.epochs, finetune_lr, train.unfreeze))
        return phases

    # -- the run ------------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        import keras

        from embedlab.augment import build_augmentation
        from embedlab.models import build_models, save_embedding_model

        started = time.perf_counter()
        train, model_params = self.train_params, self.model_params
        configure_determinism(train.seed)
        policy = _set_mixed_precision(train.mixed_precision)
        data, arrays = self._load_data()
        num_classes = len(data.class_names)
        pretrained = model_params.weights is not None
        # The checkpoint is only valid for the same data: the index (ids, splits) and how the images were made.
        data_stamp = [(self.prepared_dir / name).read_text() for name in ("index.csv", "info.json")]
        fp = fingerprint(
            self.name, model_params.model_dump(), train.model_dump(), self.augment.model_dump(), data_stamp
        )
        state = self.checkpoints.load(fp)

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
                logit_scale=model_params.logit_scale,
            )
        augment = build_augmentation(self.augment, seed=train.seed)
        live = self._open_live(state)
        best_weights = self.checkpoints.best_weights(state) if state.best_file else None
        x_train, y_train = arrays["train"]
        val_ds = self._dataset(*arrays["val"], num_classes)
        last_checkpoint = time.monotonic()
        for phase, first, last, lr, unfreeze in self._phases():
            if state.stopped_early or state.epoch >= last:
                continue
            with strategy.scope():
                _set_trainable(models.backbone, unfreeze, pretrained)
                steps_per_epoch = math.ceil(len(y_train) / train.batch_size)
                self._compile(models, lr, (last - first) * steps_per_epoch)
                if state.epoch > first:  # resume mid-phase: weights and optimizer state of the checkpoint
                    models.trainer.optimizer.build(models.trainer.trainable_variables)
                    models.trainer.load_weights(self.checkpoints.weights_path(state))
                elif state.epoch > 0 and state.weights_file:  # a new phase after a resume: a fresh optimizer
                    _load_model_only(models.trainer, self.checkpoints.weights_path(state))
                recalibrate = BatchNormRecalibrator(models.trainer)
            for epoch in range(max(first, state.epoch), last):
                _reseed(models.trainer, train.seed, epoch)
                _reseed(augment, train.seed, epoch)
                order = self._epoch_order(y_train, epoch)
                with self.clock("fit"):
                    fit = models.trainer.fit(  # the dataset is already in this epoch's seeded order
                        self._dataset(x_train, y_train, num_classes, order, augment), epochs=1, shuffle=False, verbose=0
                    )
                with self.clock("recalibrate"):
                    recalibrate(x_train[order[: train.bn_recalibration_batches * train.batch_size]], train.batch_size)
                with self.clock("validate"):
                    evaluation = models.trainer.evaluate(val_ds, verbose=0, return_dict=True)
                row = {
                    "epoch": epoch,
                    "train/loss": float(fit.history["loss"][-1]),
                    "train/accuracy": float(fit.history["logits_accuracy"][-1]),
                    "val/loss": float(evaluation["loss"]),
                    "val/accuracy": float(evaluation["logits_accuracy"]),
                    "lr": float(keras.ops.convert_to_numpy(models.trainer.optimizer.learning_rate)),
                }
                if not np.isfinite(row["val/loss"]):
                    raise UserError(
                        f"train@{self.name}: validation loss is {row['val/loss']} after epoch {epoch + 1}: training "
                        f"diverged; lower train.lr (now {lr:g}) or use train.optimizer=adam"
                    )
                _log(live, row)
                state.history.append(row)
                state.epoch = epoch + 1
                if row["val/loss"] < state.best_val_loss - 1e-6:
                    state.best_val_loss, state.best_epoch, state.wait = row["val/loss"], epoch, 0
                    best_weights = models.trainer.get_weights()
                else:
                    state.wait += 1
                state.stopped_early = state.wait >= train.patience
                log.info("%s %s epoch %d: %s", self.name, phase, epoch + 1, _fmt(row))
                finished = state.stopped_early or state.epoch >= train.epochs
                if not finished and time.monotonic() - last_checkpoint >= train.checkpoint_interval:
                    with self.clock("checkpoint"):
                        self.checkpoints.save(state, models.trainer, best_weights)
                    last_checkpoint = time.monotonic()
                self.clock.end_epoch(len(order))
                if state.stopped_early:
                    log.info("%s: early stop, no val_loss improvement for %d epochs", self.name, train.patience)
                    break
            if state.stopped_early:
                break
        live.end()

        assert best_weights is not None, "training ran no epoch"
        models.trainer.set_weights(best_weights)
        with self.clock("final_evaluation"):
            scores = self._final_scores(models, arrays, num_classes, val_ds)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        save_embedding_model(models.embedding, self.models_dir / f"{self.name}.keras")
        save_weights_atomic(models.trainer, self.models_dir / f"{self.name}.weights.h5")
        metrics = self._metrics(
            state,
            scores,
            models,
            train_images=len(y_train),
            policy=policy,
            strategy=strategy,
            wall=time.perf_counter() - started,
        )
        self.checkpoints.discard()
        keras.backend.clear_session()
        return TrainResult(metrics, state.history)

    # -- helpers ------------------------------------------------------------------------------------------------
    def _open_live(self, state: RunState):
        """A fresh dvclive log holding exactly the checkpoint's history: epochs logged after the last checkpoint of
        a killed run are replayed by the resumed run, never duplicated."""
        from dvclive import Live

        if self.live_dir.exists():
            shutil.rmtree(self.live_dir)
        live = Live(dir=str(self.live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
        for row in state.history:
            _log(live, row)
        return live

    def _final_scores(self, models, arrays, num_classes: int, val_ds) -> dict[str, float]:
        x_train, y_train = arrays["train"]
        datasets = {
            "train": self._dataset(x_train, y_train, num_classes),
            "val": val_ds,
            "test": self._dataset(*arrays["test"], num_classes),
        }
        return {
            split: models.trainer.evaluate(ds, verbose=0, return_dict=True)["logits_accuracy"]
            for split, ds in datasets.items()
            if len(ds)
        }

    def _metrics(
        self, state: RunState, scores, models, *, train_images: int, policy: str, strategy, wall: float
    ) -> dict[str, float | int]:
        parts = {part: sum(epoch.get(part, 0.0) for epoch in self.clock.epochs) for part in EPOCH_PARTS}
        return {
            "train_accuracy": round(float(scores.get("train", float("nan"))), 6),
            "val_accuracy": round(float(scores.get("val", float("nan"))), 6),
            "test_accuracy": round(float(scores.get("test", float("nan"))), 6),
            "best_val_loss": round(float(state.best_val_loss), 6),
            "best_epoch": state.best_epoch + 1,
            "epochs_run": state.epoch,
            "train_images": train_images,
            "params": int(models.trainer.count_params()),
            "mixed_precision": int(policy != "float32"),
            "devices": int(strategy.num_replicas_in_sync),
            "wall_seconds": round(wall, 1),
            # this process's epochs: fit only, and whole epochs (validation, recalibration, checkpoints included)
            "train_images_per_second": self.clock.images_per_second(("fit",)),
            "epoch_images_per_second": self.clock.images_per_second(),
            "cpu_cores_used": self.clock.cores_used(),
            **{f"seconds_{part}": round(value, 1) for part, value in parts.items()},
            "seconds_final_evaluation": round(self.clock.current["final_evaluation"], 1),
        }


def _log(live, row: dict[str, float]) -> None:
    for key, value in row.items():
        if key != "epoch":
            live.log_metric(key, value)
    live.next_step()


def save_weights_atomic(model, path: Path) -> None:
    """Keras' ``save_weights`` through a temporary sibling: a kill mid-write never leaves a torn file."""
    from embedlab.fsutil import atomic_path

    with atomic_path(path) as tmp:
        model.save_weights(str(tmp))


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
