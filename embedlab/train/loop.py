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

What this module writes: the resume checkpoints (``work_dir``) and the dvclive log (``live_dir``), both while it
trains. The trained models and metrics are returned; ``stages/train.py`` writes them.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedlab.core.errors import UserError
from embedlab.core.params import AugmentParams, ModelParams, TrainParams
from embedlab.models.devices import configure_determinism, make_strategy, set_mixed_precision
from embedlab.train.batchnorm import BatchNormRecalibrator
from embedlab.train.checkpoints import CheckpointStore, RunState, fingerprint, load_model_only
from embedlab.train.data import TrainingData
from embedlab.train.optimization import (
    Phase,
    batchnorm_shift_paths,
    compile_trainer,
    lookahead_callback,
    make_optimizer,
    phases,
)
from embedlab.train.stopwatch import StopWatch

log = logging.getLogger(__name__)

# Random init: BatchNorm must learn its statistics from ~a thousand images; Keras' default momentum 0.99 would
# still remember the initial (0, 1) statistics after hundreds of steps and wreck evaluation.
FROM_SCRATCH_BN_MOMENTUM = 0.9


@dataclass
class TrainResult:
    """What a finished run hands to the stage: the two models to save, the metrics and the per-epoch history."""

    metrics: dict[str, float | int]
    history: list[dict[str, float]]
    embedding: Any  # keras.Model: uint8 image -> unit embedding (models/<bb>.keras)
    trainer: Any  # keras.Model: the embedding model plus the classifier head (models/<bb>.weights.h5)


@dataclass
class _Run:
    """Everything one run holds while it trains."""

    models: Any
    strategy: Any
    policy: str
    augment: Any
    data: TrainingData
    state: RunState
    live: Any
    best_weights: list[np.ndarray] | None
    last_checkpoint: float = field(default_factory=time.monotonic)
    callbacks: list[Any] = field(default_factory=list)  # the phase's fit callbacks (lookahead)


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

    def run(self) -> TrainResult:
        """Train from the last checkpoint (or from the start) to the end or an early stop; restore the best epoch."""
        started = time.perf_counter()
        run = self._start()
        for phase in phases(self.train_params):
            if run.state.stopped_early or run.state.epoch >= phase.end_epoch:
                continue
            recalibrate = self._enter_phase(run, phase)
            for epoch in range(max(phase.first_epoch, run.state.epoch), phase.end_epoch):
                self._train_epoch(run, phase, epoch, recalibrate)
                if run.state.stopped_early:
                    log.info("%s: early stop, no val_loss improvement for %d epochs", self.name, run.state.wait)
                    break
        run.live.end()
        assert run.best_weights is not None, "training ran no epoch"
        run.models.trainer.set_weights(run.best_weights)
        with self.clock("final_evaluation"):
            scores = {split: run.data.accuracy(run.models.trainer, split) for split in ("train", "val", "test")}
            if self.augment.flip in ("horizontal", "horizontal_and_vertical"):  # trained on mirrors: score them too
                scores["test_flip_averaged"] = run.data.flip_averaged_accuracy(run.models.trainer, "test")
        metrics = self._metrics(run, scores, wall=time.perf_counter() - started)
        return TrainResult(metrics, run.state.history, run.models.embedding, run.models.trainer)

    def discard_checkpoints(self) -> None:
        """The run's outputs are written: its resume checkpoints go."""
        self.checkpoints.discard()

    # -- the run's parts ----------------------------------------------------------------------------------------
    def _start(self) -> _Run:
        """Seeds, dtype policy, data, the resumable state and the models."""
        from embedlab.augment.layers import build_augmentation
        from embedlab.models.backbones import build_models
        from embedlab.models.smallnet import apply_init_options

        train, model_params = self.train_params, self.model_params
        configure_determinism(train.seed)
        policy = set_mixed_precision(train.mixed_precision)
        data = TrainingData.load(self.prepared_dir, train)
        # The checkpoint is only valid for the same data: the index (ids, splits) and how the images were made.
        parts = (model_params.model_dump(), train.model_dump(), self.augment.model_dump(), data.stamp)
        state = self.checkpoints.load(fingerprint(self.name, *parts))
        strategy = make_strategy(train.strategy)
        pretrained = model_params.weights is not None
        with strategy.scope():
            models = build_models(
                self.name,
                data.image_size,
                data.num_classes,
                embedding_dim=model_params.embedding_dim,
                dropout=train.dropout,
                weights=model_params.weights,
                input_size=model_params.input_size,
                bn_momentum=None if pretrained else FROM_SCRATCH_BN_MOMENTUM,
                probe_head=train.loss == "triplet",
                logit_scale=model_params.logit_scale,
                bn_scale=model_params.bn_scale,
            )
        # A resumed run overwrites these first weights with the checkpoint's.
        apply_init_options(models, model_params, data.arrays["train"][0], seed=train.seed)
        best = self.checkpoints.best_weights(state) if state.best_file else None
        augment = build_augmentation(self.augment, seed=train.seed)
        return _Run(models, strategy, policy, augment, data, state, self._open_live(state), best)

    def _enter_phase(self, run: _Run, phase: Phase) -> BatchNormRecalibrator:
        """Set what trains, compile with the phase's optimizer and, on a resume, load the checkpoint."""
        state, models = run.state, run.models
        with run.strategy.scope():
            _set_trainable(models.backbone, phase.unfreeze, pretrained=self.model_params.weights is not None)
            steps_per_epoch = math.ceil(run.data.train_size / self.train_params.batch_size)
            total_steps = (phase.end_epoch - phase.first_epoch) * steps_per_epoch
            shifts = batchnorm_shift_paths(models.trainer)
            optimizer = make_optimizer(self.train_params, phase.lr, total_steps, shifts)
            compile_trainer(models.trainer, self.train_params, optimizer)
            lookahead = self.train_params.lookahead
            run.callbacks = [lookahead_callback(models.trainer.trainable_variables, total_steps)] if lookahead else []
            if state.epoch > phase.first_epoch:  # resume mid-phase: weights and optimizer state of the checkpoint
                models.trainer.optimizer.build(models.trainer.trainable_variables)
                models.trainer.load_weights(self.checkpoints.weights_path(state))
            elif state.epoch > 0 and state.weights_file:  # a new phase after a resume: a fresh optimizer
                load_model_only(models.trainer, self.checkpoints.weights_path(state))
            return BatchNormRecalibrator(models.trainer)

    def _train_epoch(self, run: _Run, phase: Phase, epoch: int, recalibrate: BatchNormRecalibrator) -> None:
        """One epoch: fit, recalibrate BatchNorm, validate, log, keep the best weights, checkpoint when due."""
        import keras

        train, trainer = self.train_params, run.models.trainer
        self.clock.start_epoch()
        _reseed(trainer, train.seed, epoch)
        _reseed(run.augment, train.seed, epoch)
        order = run.data.epoch_order(epoch)
        batches = run.data.train_dataset(
            order, run.augment, flip_parity=epoch % 2 if self.augment.alternate_flip else None
        )
        with self.clock("fit"):  # the dataset is already in this epoch's seeded order
            fit = trainer.fit(batches, epochs=1, shuffle=False, verbose=0, callbacks=run.callbacks)
        with self.clock("recalibrate"):
            recalibrate(run.data.first_images(order, train.bn_recalibration_batches), train.batch_size)
        with self.clock("validate"):
            evaluation = trainer.evaluate(run.data.dataset("val"), verbose=0, return_dict=True)
        row = {
            "epoch": epoch,
            "train/loss": float(fit.history["loss"][-1]),
            "train/accuracy": float(fit.history["logits_accuracy"][-1]),
            "val/loss": float(evaluation["loss"]),
            "val/accuracy": float(evaluation["logits_accuracy"]),
            "lr": float(keras.ops.convert_to_numpy(trainer.optimizer.learning_rate)),
        }
        if not np.isfinite(row["val/loss"]):
            raise UserError(
                f"train@{self.name}: validation loss is {row['val/loss']} after epoch {epoch + 1}: training "
                f"diverged; lower train.lr (now {phase.lr:g}) or use train.optimizer=adam"
            )
        self._record(run, row)
        log.info("%s %s epoch %d: %s", self.name, phase.name, epoch + 1, _fmt(row))
        finished = run.state.stopped_early or run.state.epoch >= train.epochs
        if not finished and time.monotonic() - run.last_checkpoint >= train.checkpoint_interval:
            with self.clock("checkpoint"):
                self.checkpoints.save(run.state, trainer, run.best_weights)
            run.last_checkpoint = time.monotonic()
        self.clock.end_epoch(len(order))

    def _record(self, run: _Run, row: dict[str, float]) -> None:
        """Log the epoch and update the early-stopping state; the best epoch's weights stay in memory."""
        state = run.state
        _log(run.live, row)
        state.history.append(row)
        state.epoch = row["epoch"] + 1
        if row["val/loss"] < state.best_val_loss - 1e-6:
            state.best_val_loss, state.best_epoch, state.wait = row["val/loss"], row["epoch"], 0
            run.best_weights = run.models.trainer.get_weights()
        else:
            state.wait += 1
        state.stopped_early = state.wait >= self.train_params.patience

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

    def _metrics(self, run: _Run, scores: dict[str, float], *, wall: float) -> dict[str, float | int]:
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
            "train_images_per_second": self.clock.images_per_second(("fit",)),
            "epoch_images_per_second": self.clock.images_per_second(),
            "cpu_cores_used": self.clock.cores_used(),
            **{f"seconds_{part}": round(value, 1) for part, value in self.clock.totals().items()},
            "seconds_final_evaluation": round(self.clock.current["final_evaluation"], 1),
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
        variable.assign(np.array([seed * 100_003 + epoch * 1_009 + i, 0], dtype=variable.dtype))


def _log(live, row: dict[str, float]) -> None:
    for key, value in row.items():
        if key != "epoch":
            live.log_metric(key, value)
    live.next_step()


def _fmt(row: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch")
