"""The train stage's loop: one backbone trained into an embedding model, epoch by epoch, resumable.

Why the loop calls ``fit`` once per epoch instead of once per run: Keras' ``BackupAndRestore`` restores weights and
optimizer state but not the data order, the augmentation/dropout random state or early-stopping state, so a resumed
run drifts from an uninterrupted one. Here every epoch's batches and random draws depend only on ``(seed, epoch)``
and a checkpoint (:mod:`embedlab.train.checkpoints`) holds everything else, so a killed run resumes from its last
checkpoint and ends with the same metrics as one that was never interrupted.

Why the per-epoch work is small: on a 2-core CPU a digits epoch trains in seconds, so validation, BatchNorm
recalibration and checkpoints would otherwise cost as much as training. Recalibration runs compiled, checkpoints
are written every ``train.checkpoint_interval`` seconds rather than every epoch (a resume replays the epochs after
the last one exactly), and the best weights are kept in memory. The metrics report where the time went.

Beside the loop: early stopping and the dvclive log (:mod:`~embedlab.train.progress`), resume checkpoints
(:mod:`~embedlab.train.checkpoints`), the stopwatch (:mod:`~embedlab.train.stopwatch`), what one step does
(:mod:`~embedlab.train.optimization`) and the data (:mod:`~embedlab.train.data`). This module writes the resume
checkpoints (``work_dir``) and the dvclive log (``live_dir``) while it trains; the trained models and metrics are
returned, and ``stages/train.py`` writes them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embedlab.augment.test_time import TestTimeViews
from embedlab.core.errors import UserError
from embedlab.core.params import AugmentParams, ModelParams, TrainParams
from embedlab.models.devices import (
    check_workers_agree,
    configure_determinism,
    is_chief,
    make_strategy,
    set_mixed_precision,
    stopped_workers_named,
    work_around_keras_multiworker,
)
from embedlab.train.batchnorm import BatchNormRecalibrator
from embedlab.train.checkpoints import CheckpointStore, RunState, fingerprint, load_model_only
from embedlab.train.data import TrainingData
from embedlab.train.optimization import (
    ACCURACY,
    Phase,
    batchnorm_shift_paths,
    compile_trainer,
    lookahead_callback,
    make_optimizer,
    phases,
)
from embedlab.train.progress import EarlyStopping, TrainingLog
from embedlab.train.stopwatch import StopWatch

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from embedlab.models.backbones import Models

log = logging.getLogger(__name__)

# Random init: BatchNorm must learn its statistics from ~a thousand images; Keras' default momentum 0.99 would
# still remember the initial (0, 1) statistics after hundreds of steps and wreck evaluation.
FROM_SCRATCH_BN_MOMENTUM = 0.9
# An epoch's random layers (augmentation, dropout) start from seed·SEED_STRIDE + epoch·EPOCH_STRIDE + layer: distinct
# for every (seed, epoch, layer) while a run has fewer than 99 epochs and a model fewer than 1,009 random layers.
SEED_STRIDE, EPOCH_STRIDE = 100_003, 1_009


@dataclass
class TrainResult:
    """What a finished run hands to the stage: the two models to save, the metrics and the per-epoch history."""

    metrics: dict[str, float | int]
    history: list[dict[str, float]]
    embedding: keras.Model  # uint8 image -> unit embedding (models/<bb>.keras)
    trainer: keras.Model  # the embedding model plus the classifier head (models/<bb>.weights.h5)


@dataclass
class Run:
    """One run's working parts, from :meth:`Trainer.build` to the end."""

    models: Models
    strategy: tf.distribute.Strategy
    policy: str  # the Keras dtype policy: float32, mixed_bfloat16 or mixed_float16
    augmentation: keras.Sequential
    data: TrainingData
    state: RunState
    stopping: EarlyStopping
    log: TrainingLog
    last_checkpoint: float


class Trainer:
    """Train backbone ``name`` on the prepared images with ``model.*``, ``train.*`` and ``augment.*``."""

    def __init__(
        self,
        name: str,
        model_params: ModelParams,
        train_params: TrainParams,
        augment: AugmentParams,
        *,
        prepared_dir: str | Path,
        work_dir: str | Path,
        live_dir: str | Path,
    ) -> None:
        self.name, self.model_params, self.train_params, self.augment = name, model_params, train_params, augment
        self.prepared_dir = Path(prepared_dir)
        self.checkpoints = CheckpointStore(Path(work_dir))
        self.live_dir = Path(live_dir)
        self.clock = StopWatch()
        self.chief = True  # False on a multi-worker cluster's other workers, which write nothing in the repository

    def run(self) -> TrainResult:
        """Build; per phase, compile; per epoch, fit, recalibrate BatchNorm and validate, until the end or an early
        stop; then restore the best epoch and score it. A run with a checkpoint resumes after its last epoch."""
        started = time.perf_counter()
        run = self.build()
        with stopped_workers_named(self.name):
            for phase in phases(self.train_params):
                if run.state.stopped_early or run.state.epoch >= phase.end_epoch:
                    continue  # finished before this run resumed
                callbacks = self._compile(run, phase)
                recalibrate = BatchNormRecalibrator(run.models.trainer)
                for epoch in range(max(phase.first_epoch, run.state.epoch), phase.end_epoch):
                    self._epoch(run, phase, epoch, recalibrate, callbacks)
                    if run.state.stopped_early:
                        log.info("%s: early stop, no val_loss improvement for %d epochs", self.name, run.state.wait)
                        break
        run.log.end()
        assert run.stopping.best_weights is not None, "training ran no epoch"
        run.models.trainer.set_weights(run.stopping.best_weights)
        with self.clock("final_evaluation"):
            scores = {split: run.data.accuracy(run.models.trainer, split) for split in ("train", "val", "test")}
            # trained on mirrors (and shifts): score those views too, as airbench does
            if self.augment.flip in ("horizontal", "horizontal_and_vertical"):
                flips = TestTimeViews.of(flip=True, translate=False)
                scores["test_flip_averaged"] = run.data.averaged_accuracy(run.models.trainer, "test", flips)
                if self.augment.shift > 0:
                    shifts = TestTimeViews.of(flip=True, translate=True)
                    scores["test_flip_translate_averaged"] = run.data.averaged_accuracy(
                        run.models.trainer, "test", shifts
                    )
        metrics = _report(run, self.clock, scores, wall=time.perf_counter() - started)
        return TrainResult(metrics, run.state.history, run.models.embedding, run.models.trainer)

    def build(self) -> Run:
        """Seeds, dtype policy, data, the resumable state, and the models with their first weights (every one of
        them drawn from ``train.seed``; a resumed run then loads the checkpoint's)."""
        from embedlab.augment.layers import build_augmentation
        from embedlab.models.backbones import build_models
        from embedlab.models.smallnet import apply_init_options

        train, model_params = self.train_params, self.model_params
        strategy = make_strategy(train.strategy)  # first: a multi-worker cluster must be joined before any TF op
        if not is_chief(strategy):  # the same steps as the chief (every collective needs all workers), into scratch
            self.chief = False
            self.checkpoints = self.checkpoints.for_worker(self.name)
            self.live_dir = self.checkpoints.folder.parent / "live"
        configure_determinism(train.seed)
        policy = set_mixed_precision(train.mixed_precision)
        data = TrainingData.load(self.prepared_dir, train)
        # The checkpoint is only valid for the same data: the index (ids, splits) and how the images were made.
        parts = (model_params.model_dump(), train.model_dump(), self.augment.model_dump(), data.stamp)
        state = self.checkpoints.load(fingerprint(self.name, *parts))
        check_workers_agree(strategy, state.epoch, self.name)
        pretrained = model_params.weights is not None
        with strategy.scope():
            models = build_models(
                self.name,
                data.image_size,
                data.num_classes,
                model_params,
                seed=train.seed,
                dropout=train.dropout,
                bn_momentum=None if pretrained else FROM_SCRATCH_BN_MOMENTUM,
                probe_head="softmax" not in train.loss,
            )
        apply_init_options(models, model_params, data.splits["train"][0], seed=train.seed)
        best = self.checkpoints.best_weights(state) if state.best_file else None
        augmentation = build_augmentation(self.augment, seed=train.seed)
        stopping = EarlyStopping(state, train.patience, best)
        training_log = TrainingLog(self.live_dir, state.history)
        return Run(models, strategy, policy, augmentation, data, state, stopping, training_log, time.monotonic())

    def _compile(self, run: Run, phase: Phase) -> list[keras.callbacks.Callback]:
        """Set what trains, compile with the phase's optimizer and, on a resume, load the checkpoint. Returns the
        phase's fit callbacks (lookahead)."""
        train, state, models = self.train_params, run.state, run.models
        with run.strategy.scope():
            _set_trainable(models.backbone, phase.unfreeze, pretrained=self.model_params.weights is not None)
            total_steps = (phase.end_epoch - phase.first_epoch) * math.ceil(run.data.train_size / train.batch_size)
            optimizer = make_optimizer(train, phase.lr, total_steps, batchnorm_shift_paths(models.trainer))
            compile_trainer(models.trainer, train, optimizer)
            work_around_keras_multiworker(models.trainer, run.strategy, run.data.dataset("val"))
            if state.epoch > phase.first_epoch:  # resume mid-phase: weights and optimizer state of the checkpoint
                models.trainer.optimizer.build(models.trainer.trainable_variables)
                models.trainer.load_weights(self.checkpoints.weights_path(state))
            elif state.epoch > 0 and state.weights_file:  # a new phase after a resume: a fresh optimizer
                load_model_only(models.trainer, self.checkpoints.weights_path(state))
        return [lookahead_callback(models.trainer.trainable_variables, total_steps)] if train.lookahead else []

    def _epoch(self, run: Run, phase: Phase, epoch: int, recalibrate: BatchNormRecalibrator, callbacks: list) -> None:
        """One epoch: fit, recalibrate BatchNorm, validate, log, keep the best weights, checkpoint when due."""
        import keras

        train, trainer = self.train_params, run.models.trainer
        self.clock.start_epoch()
        _reseed(trainer, train.seed, epoch)
        _reseed(run.augmentation, train.seed, epoch)
        order = run.data.epoch_order(epoch)
        flip_parity = epoch % 2 if self.augment.alternate_flip else None
        batches = run.data.train_dataset(order, run.augmentation, flip_parity=flip_parity)
        with self.clock("fit"):  # the dataset is already in this epoch's seeded order
            fit = trainer.fit(batches, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
        with self.clock("recalibrate"):
            recalibrate(run.data.first_images(order, train.bn_recalibration_batches), train.batch_size)
        with self.clock("validate"):
            evaluation = trainer.evaluate(run.data.dataset("val"), verbose=0, return_dict=True)
        row = {
            "epoch": epoch,
            "train/loss": float(fit.history["loss"][-1]),
            "train/accuracy": float(fit.history[ACCURACY][-1]),
            "val/loss": float(evaluation["loss"]),
            "val/accuracy": float(evaluation[ACCURACY]),
            "lr": float(keras.ops.convert_to_numpy(trainer.optimizer.learning_rate)),
        }
        if not np.isfinite(row["val/loss"]):
            raise UserError(
                f"train@{self.name}: validation loss is {row['val/loss']} after epoch {epoch + 1}: training "
                f"diverged; lower train.lr (now {phase.lr:g}) or use train.optimizer=adam"
            )
        run.log.log(row)
        run.stopping.update(row, trainer.get_weights)
        log.info("%s %s epoch %d: %s", self.name, phase.name, epoch + 1, _fmt(row))
        finished = run.state.stopped_early or run.state.epoch >= train.epochs
        if not finished and time.monotonic() - run.last_checkpoint >= train.checkpoint_interval:
            with self.clock("checkpoint"):
                self.checkpoints.save(run.state, trainer, run.stopping.best_weights)
            run.last_checkpoint = time.monotonic()
        self.clock.end_epoch(len(order))


def _report(run: Run, clock: StopWatch, scores: dict[str, float], *, wall: float) -> dict[str, float | int]:
    """``reports/train/<bb>.json``: accuracies, the early-stopping outcome, and where the time went."""
    state = run.state
    return {
        **{f"{split}_accuracy": round(float(value), 6) for split, value in scores.items()},
        "best_val_loss": round(float(state.best_val_loss), 6),
        "best_epoch": state.best_epoch + 1,
        "epochs_run": state.epoch,
        "train_images": run.data.train_size,
        "params": int(run.models.trainer.count_params()),
        "mixed_precision": int(run.policy != "float32"),
        "devices": int(run.strategy.num_replicas_in_sync),
        "wall_seconds": round(wall, 1),
        # this process's epochs: fit only, and whole epochs (validation, recalibration, checkpoints included)
        "train_images_per_second": clock.images_per_second(("fit",)),
        "epoch_images_per_second": clock.images_per_second(),
        "cpu_cores_used": clock.cores_used(),
        **{f"seconds_{part}": round(value, 1) for part, value in clock.totals().items()},
        "seconds_final_evaluation": round(clock.current["final_evaluation"], 1),
    }


def _set_trainable(backbone, unfreeze: str | int, *, pretrained: bool) -> None:
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
        variable.assign(np.array([seed * SEED_STRIDE + epoch * EPOCH_STRIDE + i, 0], dtype=variable.dtype))


def _fmt(row: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch")
