"""How training steps: the training phases, the learning-rate schedules and the optimizers of ``train.*``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from embedlab.params import TrainParams


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
        """The phase's schedule, step by step."""

        def __call__(self, step):
            return lr_at(step, peak, total_steps, train.lr_schedule, train.lr_warmup)

    return PhaseSchedule()


def make_optimizer(train: TrainParams, lr: float, total_steps: int):
    """The optimizer ``train.optimizer`` names, with the phase's lr schedule and ``train.weight_decay`` (decoupled,
    as Keras applies it; 0 turns it off for every optimizer). SGD is Nesterov with momentum 0.9."""
    import keras

    rate = _schedule(train, lr, total_steps)
    decay = train.weight_decay or None
    match train.optimizer:
        case "sgd":
            return keras.optimizers.SGD(rate, momentum=0.9, nesterov=True, weight_decay=decay)
        case "rmsprop":
            return keras.optimizers.RMSprop(rate, weight_decay=decay)
        case "adamw":
            return keras.optimizers.AdamW(rate, weight_decay=train.weight_decay)
        case "adam":
            return keras.optimizers.Adam(rate, weight_decay=decay)
        case other:
            raise ValueError(f"unknown train.optimizer {other!r}")


def compile_trainer(trainer, train: TrainParams, optimizer) -> None:
    """The losses ``train.loss`` names: softmax cross-entropy on the classifier head, and/or a triplet loss on the
    embedding; accuracy of the head as the metric."""
    import keras

    from embedlab.losses import TripletLoss

    losses = {"logits": keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=train.label_smoothing)}
    weights = {"logits": 1.0}
    if "triplet" in train.loss:
        losses["embedding"] = TripletLoss(train.triplet_mining, train.triplet_margin)
        weights["embedding"] = train.triplet_weight
    trainer.compile(
        optimizer=optimizer,
        loss=losses,
        loss_weights=weights,
        metrics={"logits": [keras.metrics.CategoricalAccuracy(name="accuracy")]},
        jit_compile=False,
    )
