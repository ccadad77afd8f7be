"""The train stage's data: the prepared splits, each epoch's seeded order and the tf.data pipelines.

The images are streamed: each batch is read from ``data/prepared/images.npy`` when the pipeline needs it
(:class:`~embedlab.data.prepared.ImageRows`), so the stage's memory does not grow with the number of images
(benchmarks/cost_curve.py measures it). Only the labels are held in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedlab.augment.test_time import TestTimeViews, View, identity
from embedlab.core.errors import UserError
from embedlab.core.params import TrainParams
from embedlab.data.prepared import ImageRows
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
    """The train (the ``train.max_per_class`` budget of it), val and test images and labels: the images as
    :class:`~embedlab.data.prepared.ImageRows` (or any array indexed by row, for tests), the labels as an array."""

    splits: dict[str, tuple[ImageRows | np.ndarray, np.ndarray]]
    num_classes: int
    image_size: int
    stamp: list[str]  # the prepared index and info: a checkpoint is valid only for the same data
    train: TrainParams
    _datasets: dict[str, object] = field(default_factory=dict)
    _train_pipeline: tuple | None = None  # (key, dataset): train_dataset
    _epoch: tuple[np.ndarray, int | None] = (np.zeros(0, "int64"), None)  # the order and flip parity it reads

    @classmethod
    def load(cls, prepared_dir: Path, train: TrainParams) -> TrainingData:
        """Read ``data/prepared``; the training budget is a seeded class-balanced subset of the train split."""
        from embedlab.data.prepared import Prepared
        from embedlab.data.sampling import class_balanced_subset

        data = Prepared.open(prepared_dir)
        rows = {s: data.split(s) for s in ("train", "val", "test")}
        if len(rows["train"]) == 0 or len(rows["val"]) == 0:
            raise UserError("data/prepared has no train or no val images; lower data.val_fraction or add images")
        rows["train"] = rows["train"][
            class_balanced_subset(data.labels[rows["train"]], train.max_per_class, train.seed)
        ]
        splits = {s: (data.images.take(r), data.labels[r]) for s, r in rows.items()}
        stamp = [(Path(prepared_dir) / name).read_text() for name in ("index.csv", "info.json")]
        return cls(splits, len(data.class_names), data.image_size, stamp, train)

    @property
    def train_size(self) -> int:
        """Training images per epoch."""
        return len(self.splits["train"][1])

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The training rows of ``epoch``, depending only on (seed, epoch): class-balanced batches for a metric
        loss (every batch must hold positives), a plain shuffle otherwise."""
        from embedlab.data.sampling import class_balanced_order, shuffled_order

        labels, seed = self.splits["train"][1], self.train.seed
        if self.train.embedding_loss:
            return class_balanced_order(labels, self.train.batch_size, seed, epoch)
        return shuffled_order(len(labels), seed, epoch)

    def first_images(self, order: np.ndarray, batches: int) -> np.ndarray:
        """The first ``batches`` batches of training images in ``order`` (BatchNorm recalibration's input)."""
        return self.splits["train"][0][order[: batches * self.train.batch_size]]

    def train_dataset(self, order: np.ndarray, augment, flip_parity: int | None = None):
        """One epoch of training batches in ``order``, augmented on the fly; with ``flip_parity`` (0 or 1: the
        epoch's parity, ``augment.alternate_flip``) each image is mirrored when its seeded coin differs from it.

        The pipeline is built once per ``augment`` and order length, and reads the order (and parity) set here:
        building it anew each epoch traced the augmentation again, which cost 2-3 % of a digits epoch. Its number of
        batches stays known to Keras (a softmax run's order always has the same length; a metric-loss run's, with its
        class-balanced batches, too)."""
        import tensorflow as tf

        key = (id(augment), len(order), flip_parity is None)
        if self._train_pipeline is None or self._train_pipeline[0] != key:
            images, labels = self.splits["train"]
            coins = np.random.default_rng(self.train.seed).random(self.train_size) < FLIP_SHARE
            size, batch = len(order), self.train.batch_size

            def read(start: np.int64) -> tuple[np.ndarray, np.ndarray]:
                """Batch ``start`` of the current order, read from the file, mirrored where its coins say."""
                order, parity = self._epoch
                rows = order[start : min(start + batch, size)]
                pixels = images[rows]
                if parity is not None:
                    mirror = coins[rows] != bool(parity)
                    pixels[mirror] = pixels[mirror, :, ::-1]
                return pixels, labels[rows].astype("int32")

            batches = tf.data.Dataset.range(0, size, batch).map(lambda start: self._read_batch(read, start))
            self._train_pipeline = (key, self._finish(batches, augment))
        self._epoch = (order, flip_parity)
        return self._train_pipeline[1]

    def dataset(self, split: str):
        """The whole split, unaugmented, in its stored order (built once)."""
        if split not in self._datasets:
            self._datasets[split] = self._make(*self.splits[split])
        return self._datasets[split]

    def accuracy(self, trainer, split: str) -> float:
        """The classifier head's accuracy on a split (NaN for an empty one)."""
        if not len(self.splits[split][1]):
            return float("nan")
        return trainer.evaluate(self.dataset(split), verbose=0, return_dict=True)[ACCURACY]

    def averaged_accuracy(self, trainer, split: str, views: TestTimeViews) -> float:
        """The classifier head's accuracy with each image's logits averaged over test-time ``views`` (flips, and
        1 px shifts: as airbench scores CIFAR-10): meaningful only for a model trained on such views."""
        images, labels = self.splits[split]
        if not len(labels):
            return float("nan")
        logits = [trainer.predict(self._make(images, labels, view), verbose=0)["logits"] for view in views.views]
        return float(np.mean(np.argmax(views.average(logits), axis=1) == labels))

    def _read_batch(self, read, start):
        """The tf.data side of a batch ``read`` returns: pixels of known shape and the trainer's two targets, one-hot
        labels (softmax) and class ids (the metric losses: triplet, supervised contrastive)."""
        import tensorflow as tf

        pixels, ids = tf.numpy_function(read, [start], (tf.uint8, tf.int32))
        pixels.set_shape((None, self.image_size, self.image_size, 3))
        ids.set_shape((None,))
        return pixels, {"logits": tf.one_hot(ids, self.num_classes, dtype="float32"), "embedding": ids}

    def _make(self, images: ImageRows | np.ndarray, labels: np.ndarray, view: View = identity):
        """Unaugmented batches of ``images`` (seen through a test-time ``view``), in order, for scoring:
        ``EVAL_BATCH_FACTOR`` training batches at once, capped at ``EVAL_BATCH_IMAGES`` and at the forward pixel
        budget (never below one training batch)."""
        import tensorflow as tf

        from embedlab.core.runtime import forward_batch_size

        batch = max(self.train.batch_size, min(EVAL_BATCH_FACTOR * self.train.batch_size, EVAL_BATCH_IMAGES))
        batch = max(forward_batch_size(batch, self.image_size), self.train.batch_size)

        def read(start: np.int64) -> tuple[np.ndarray, np.ndarray]:
            pixels = images[start : start + batch]
            return view(pixels), labels[start : start + batch].astype("int32")

        batches = tf.data.Dataset.range(0, len(labels), batch).map(lambda start: self._read_batch(read, start))
        return self._finish(batches)

    @staticmethod
    def _finish(ds, augment=None):
        """Augment each batch on the fly (training only); prefetch without autotuning
        (:func:`~embedlab.core.runtime.finish_pipeline`)."""
        import tensorflow as tf

        from embedlab.core.runtime import finish_pipeline

        if augment is not None and len(augment.layers):

            def apply(x, y):
                pixels = augment(tf.cast(x, "float32"), training=True)
                return tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), "uint8"), y

            # One batch at a time: the random layers draw their seeds from shared state variables, and parallel
            # calls would race for them, handing a batch another batch's draws whenever tf.data chose to run ahead.
            ds = ds.map(apply)
        return finish_pipeline(ds)
