"""The train stage's data: the prepared splits in memory, each epoch's seeded order and the tf.data pipelines."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedlab.core.errors import UserError
from embedlab.core.params import TrainParams
from embedlab.train.optimization import ACCURACY

# Scoring batches hold up to this many images (or one training batch, when that is larger).
EVAL_BATCH_IMAGES = 512
# Scoring batches hold this many training batches: no gradients, so memory allows more images per forward pass,
# and fewer, larger passes are faster on a CPU.
EVAL_BATCH_FACTOR = 4
# alternate_flip: the share of images shown mirrored in even epochs (airbench's fair coin: each side half the time).
FLIP_SHARE = 0.5


@dataclass
class TrainingData:
    """The train (the ``train.max_per_class`` budget of it), val and test images and labels, as arrays."""

    arrays: dict[str, tuple[np.ndarray, np.ndarray]]
    num_classes: int
    image_size: int
    stamp: list[str]  # the prepared index and info: a checkpoint is valid only for the same data
    train: TrainParams
    _datasets: dict[str, object] = field(default_factory=dict)
    _train_pipeline: tuple | None = None  # (key, (order, parity) variables, dataset): train_dataset

    @classmethod
    def load(cls, prepared_dir: Path, train: TrainParams) -> TrainingData:
        """Read ``data/prepared``; the training budget is a seeded class-balanced subset of the train split."""
        from embedlab.data.prepared import Prepared
        from embedlab.data.sampling import class_balanced_subset

        data = Prepared.open(prepared_dir)
        splits = {s: data.split(s) for s in ("train", "val", "test")}
        if len(splits["train"]) == 0 or len(splits["val"]) == 0:
            raise UserError("data/prepared has no train or no val images; lower data.val_fraction or add images")
        rows = splits["train"]
        splits["train"] = rows[class_balanced_subset(data.labels[rows], train.max_per_class, train.seed)]
        arrays = {s: (np.asarray(data.images[rows]), data.labels[rows]) for s, rows in splits.items()}
        stamp = [(Path(prepared_dir) / name).read_text() for name in ("index.csv", "info.json")]
        return cls(arrays, len(data.class_names), data.image_size, stamp, train)

    @property
    def train_size(self) -> int:
        """Training images per epoch."""
        return len(self.arrays["train"][1])

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The training rows of ``epoch``, depending only on (seed, epoch): class-balanced batches for a triplet
        loss (every batch must hold positives), a plain shuffle otherwise."""
        from embedlab.data.sampling import class_balanced_order, shuffled_order

        labels, seed = self.arrays["train"][1], self.train.seed
        if "triplet" in self.train.loss:
            return class_balanced_order(labels, self.train.batch_size, seed, epoch)
        return shuffled_order(len(labels), seed, epoch)

    def first_images(self, order: np.ndarray, batches: int) -> np.ndarray:
        """The first ``batches`` batches of training images in ``order`` (BatchNorm recalibration's input)."""
        return self.arrays["train"][0][order[: batches * self.train.batch_size]]

    def train_dataset(self, order: np.ndarray, augment, flip_parity: int | None = None):
        """One epoch of training batches in ``order``, augmented on the fly; with ``flip_parity`` (0 or 1: the
        epoch's parity, ``augment.alternate_flip``) each image is mirrored when its seeded coin differs from it.

        The pipeline is built once per ``augment`` and order length, and reads the order (and parity) from variables
        set here: building it anew each epoch traced the augmentation again, which cost 2-3 % of a digits epoch. Its
        number of batches stays known to Keras (a softmax run's order always has the same length; a triplet run's,
        with its class-balanced batches, too)."""
        import tensorflow as tf

        key = (id(augment), len(order), flip_parity is None)
        if self._train_pipeline is None or self._train_pipeline[0] != key:
            images, targets = tf.constant(self.arrays["train"][0]), self._targets(self.arrays["train"][1])
            rows = tf.Variable(np.zeros(len(order), "int64"), trainable=False)
            parity = tf.Variable(False, trainable=False)
            coins = tf.constant(np.random.default_rng(self.train.seed).random(self.train_size) < FLIP_SHARE)
            size, batch, alternate = len(order), self.train.batch_size, flip_parity is not None

            def gather(start):
                batch_rows = rows[start : tf.minimum(start + batch, size)]
                pixels = tf.gather(images, batch_rows)
                if alternate:
                    mirror = tf.not_equal(tf.gather(coins, batch_rows), parity)[:, None, None, None]
                    pixels = tf.where(mirror, tf.reverse(pixels, axis=[2]), pixels)
                return pixels, tf.nest.map_structure(lambda t: tf.gather(t, batch_rows), targets)

            batches = tf.data.Dataset.range(0, size, batch).map(gather)
            self._train_pipeline = (key, (rows, parity), self._finish(batches, augment))
        _, (rows, parity), pipeline = self._train_pipeline
        rows.assign(order.astype("int64"))
        parity.assign(bool(flip_parity))
        return pipeline

    def dataset(self, split: str):
        """The whole split, unaugmented, in its stored order (built once)."""
        if split not in self._datasets:
            self._datasets[split] = self._make(*self.arrays[split])
        return self._datasets[split]

    def accuracy(self, trainer, split: str) -> float:
        """The classifier head's accuracy on a split (NaN for an empty one)."""
        if not len(self.arrays[split][1]):
            return float("nan")
        return trainer.evaluate(self.dataset(split), verbose=0, return_dict=True)[ACCURACY]

    def flip_averaged_accuracy(self, trainer, split: str) -> float:
        """The classifier head's accuracy with each image's logits averaged with its mirror image's (test-time flip
        averaging, as airbench scores CIFAR-10): meaningful only for a model trained on mirrored images."""
        images, labels = self.arrays[split]
        if not len(labels):
            return float("nan")
        logits = [trainer.predict(self._make(x, labels), verbose=0)["logits"] for x in (images, images[:, :, ::-1])]
        return float(np.mean(np.argmax(logits[0] + logits[1], axis=1) == labels))

    def _targets(self, labels: np.ndarray) -> dict[str, np.ndarray]:
        """What the trainer's two outputs are scored against: one-hot labels (softmax) and class ids (triplet)."""
        return {"logits": np.eye(self.num_classes, dtype="float32")[labels], "embedding": labels.astype("int32")}

    def _make(self, images: np.ndarray, labels: np.ndarray):
        """Unaugmented batches of ``images``, in order, for scoring: ``EVAL_BATCH_FACTOR`` training batches at once,
        capped at ``EVAL_BATCH_IMAGES``."""
        import tensorflow as tf

        batch = max(self.train.batch_size, min(EVAL_BATCH_FACTOR * self.train.batch_size, EVAL_BATCH_IMAGES))
        return self._finish(tf.data.Dataset.from_tensor_slices((images, self._targets(labels))).batch(batch))

    @staticmethod
    def _finish(ds, augment=None):
        """Augment each batch on the fly (training only), and prefetch."""
        import tensorflow as tf

        if augment is not None and len(augment.layers):

            def apply(x, y):
                pixels = augment(tf.cast(x, "float32"), training=True)
                return tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), "uint8"), y

            # One batch at a time: the random layers draw their seeds from shared state variables, and parallel
            # calls would race for them, handing a batch another batch's draws whenever tf.data chose to run ahead.
            ds = ds.map(apply)
        return ds.prefetch(tf.data.AUTOTUNE)
