"""How training steps: the training phases, the learning-rate schedules and the optimizers of ``train.*``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from embedlab.core.params import TrainParams


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs trained with one optimizer: the warm-up (backbone frozen) or the fine-tune."""

    name: str
    first_epoch: int
    end_epoch: int
    lr: float
    unfreeze: str | int  # "all", or the number of top backbone layers to train (0: the backbone frozen)


def phases(train: TrainParams) -> list[Phase]:
    """The warm-up phase (when ``train.warmup_epochs`` > 0) and the fine-tune phase, whose lr is scaled by
    ``train.finetune_factor`` after a warm-up."""
    found = []
    if train.warmup_epochs:
        found.append(Phase("warmup", 0, train.warmup_epochs, train.lr, 0))
    finetune_lr = train.lr * train.finetune_factor if train.warmup_epochs else train.lr
    found.append(Phase("finetune", train.warmup_epochs, train.epochs, finetune_lr, train.unfreeze))
    return found


# The warm-up rises from this share of the peak lr, not from 0: a first step at lr 0 would be a wasted step, and
# airbench's schedule starts at a tenth.
WARMUP_START = 0.1


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
    warm = peak * (WARMUP_START + (1 - WARMUP_START) * step / max(rise, 1e-9))
    left = ops.maximum(0.0, 1.0 - (step - rise) / max(total_steps - rise, 1.0))
    fall = peak * left if schedule == "triangular" else peak * 0.5 * (1.0 - ops.cos(math.pi * left))
    return ops.where(step < rise, warm, fall)


def _schedule(train: TrainParams, peak: float, total_steps: int):
    """``lr_at`` as a Keras schedule, driven by the optimizer's step counter (restored with a checkpoint)."""
    import keras

    if train.lr_schedule == "constant":
        return peak

    class PhaseSchedule(keras.optimizers.schedules.LearningRateSchedule):
        """The phase's schedule, step by step."""

        def __call__(self, step):
            return lr_at(step, peak, total_steps, train.lr_schedule, train.lr_warmup)

    return PhaseSchedule()


def make_optimizer(train: TrainParams, lr: float, total_steps: int, shift_paths: frozenset[str] = frozenset()):
    """The optimizer ``train.optimizer`` names, with the phase's lr schedule and ``train.weight_decay`` (decoupled,
    as Keras applies it; 0 turns it off for every optimizer). SGD is Nesterov with ``train.momentum``; the variables
    in ``shift_paths`` (BatchNorm shifts) step with ``train.bn_bias_lr_scale`` times the lr."""
    import keras

    rate = _schedule(train, lr, total_steps)
    decay = train.weight_decay or None
    match train.optimizer:
        case "sgd":
            if train.bn_bias_lr_scale != 1.0 and shift_paths:
                scaled = _scaled_shift_sgd_class()
                return scaled(
                    rate,
                    momentum=train.momentum,
                    nesterov=True,
                    weight_decay=decay,
                    shift_paths=shift_paths,
                    shift_lr_scale=train.bn_bias_lr_scale,
                )
            return keras.optimizers.SGD(rate, momentum=train.momentum, nesterov=True, weight_decay=decay)
        case "rmsprop":
            return keras.optimizers.RMSprop(rate, weight_decay=decay)
        case "adamw":
            return keras.optimizers.AdamW(rate, weight_decay=train.weight_decay)
        case "adam":
            return keras.optimizers.Adam(rate, weight_decay=decay)
        case other:
            raise ValueError(f"unknown train.optimizer {other!r}")


def batchnorm_shift_paths(model) -> frozenset[str]:
    """The paths of the model's trainable BatchNorm shift (beta) variables: what ``train.bn_bias_lr_scale`` scales."""
    import keras

    return frozenset(
        layer.beta.path
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.center and layer.trainable
    )


def _scaled_shift_sgd_class():
    """The SGD subclass, defined on first use: this module imports keras lazily."""
    import keras

    class ScaledShiftSGD(keras.optimizers.SGD):
        """Nesterov SGD whose BatchNorm shifts step ``shift_lr_scale`` times faster (airbench's bias scaler): with
        BatchNorm's scale frozen (``model.bn_scale: false``) the shift is what moves each unit's threshold, and at the
        weights' lr it barely moves in a short run. Weight decay is unchanged (Keras decouples it from this lr)."""

        def __init__(self, *args, shift_paths: frozenset[str], shift_lr_scale: float, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.shift_paths, self.shift_lr_scale = shift_paths, shift_lr_scale
            self._scaled_keys: set[str] = set()

        def build(self, variables) -> None:
            super().build(variables)
            self._scaled_keys = {self._var_key(v) for v in variables if v.path in self.shift_paths}

        def update_step(self, gradient, variable, learning_rate):
            if self._var_key(variable) in self._scaled_keys:
                learning_rate = learning_rate * self.shift_lr_scale
            return super().update_step(gradient, variable, learning_rate)

    return ScaledShiftSGD


# Lookahead (airbench's weight averaging): from this share of a phase's steps on, every LOOKAHEAD_EVERY steps the
# averaged weights move towards the live ones by 1 - rho and the live weights are reset to them, with
# rho = LOOKAHEAD_DECAY ** LOOKAHEAD_EVERY * (step / total) ** LOOKAHEAD_POWER: free movement early, strong
# averaging as the lr falls.
LOOKAHEAD_START = 0.3
LOOKAHEAD_EVERY = 5
LOOKAHEAD_DECAY = 0.95
LOOKAHEAD_POWER = 3.0


def lookahead_callback(variables, total_steps: int):
    """A Keras callback applying lookahead to ``variables`` during ``fit``.

    At the end of every ``fit`` (one epoch) the live weights are set to the average, so at an epoch boundary the two
    are equal: a checkpoint of the model holds the whole state, and a resumed run averages exactly as an
    uninterrupted one."""
    import keras
    import numpy as np

    start = int(LOOKAHEAD_START * total_steps)

    class Lookahead(keras.callbacks.Callback):
        def on_train_begin(self, logs=None) -> None:
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            self.average = [np.array(keras.ops.convert_to_numpy(v)) for v in variables] if step > start else None

        def on_train_batch_end(self, batch, logs=None) -> None:
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            if step <= start or step % LOOKAHEAD_EVERY:
                return
            if self.average is None:
                self.average = [np.array(keras.ops.convert_to_numpy(v)) for v in variables]
                return
            rho = LOOKAHEAD_DECAY**LOOKAHEAD_EVERY * (step / total_steps) ** LOOKAHEAD_POWER
            for average, variable in zip(self.average, variables, strict=True):
                average += (1.0 - rho) * (keras.ops.convert_to_numpy(variable) - average)
                variable.assign(average)

        def on_train_end(self, logs=None) -> None:
            if self.average is not None:
                for average, variable in zip(self.average, variables, strict=True):
                    variable.assign(average)

    return Lookahead()


# What Keras calls the classifier head's accuracy in fit's history and evaluate's results: "<output>_<metric name>".
ACCURACY = "logits_accuracy"


def compile_trainer(trainer, train: TrainParams, optimizer) -> None:
    """The losses ``train.loss`` names: softmax cross-entropy on the classifier head (a linear probe behind a
    stop-gradient when the loss has no softmax), and a triplet or supervised contrastive loss on the embedding;
    accuracy of the head as the metric."""
    import keras

    from embedlab.models.losses import SupervisedContrastiveLoss, TripletLoss

    losses = {"logits": keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=train.label_smoothing)}
    weights = {"logits": 1.0}
    if train.embedding_loss == "triplet":
        losses["embedding"] = TripletLoss(train.triplet_mining, train.triplet_margin)
        weights["embedding"] = train.triplet_weight
    elif train.embedding_loss == "supcon":
        losses["embedding"] = SupervisedContrastiveLoss(train.supcon_temperature)
        weights["embedding"] = train.supcon_weight
    trainer.compile(
        optimizer=optimizer,
        loss=losses,
        loss_weights=weights,
        metrics={"logits": [keras.metrics.CategoricalAccuracy(name=ACCURACY.removeprefix("logits_"))]},
        jit_compile=False,
    )
