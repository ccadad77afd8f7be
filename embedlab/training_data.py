"""The train stage's data: the prepared splits in memory, each epoch's seeded order and the tf.data pipelines."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedlab.errors import UserError
from embedlab.params import TrainParams


@dataclass
class TrainingData:
    """The train (the ``train.max_per_class`` budget of it), val and test images and labels, as arrays."""

    arrays: dict[str, tuple[np.ndarray, np.ndarray]]
    num_classes: int
    image_size: int
    stamp: list[str]  # the prepared index and info: a checkpoint is valid only for the same data
    train: TrainParams
    _datasets: dict[str, object] = field(default_factory=dict)

    @classmethod
    def load(cls, prepared_dir: Path, train: TrainParams) -> TrainingData:
        """Read ``data/prepared``; the training budget is a seeded class-balanced subset of the train split."""
        from embedlab.data.prepare import Prepared
        from embedlab.sampling import class_balanced_subset

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
        from embedlab.sampling import class_balanced_order, shuffled_order

        labels, seed = self.arrays["train"][1], self.train.seed
        if "triplet" in self.train.loss:
            return class_balanced_order(labels, self.train.batch_size, seed, epoch)
        return shuffled_order(len(labels), seed, epoch)

    def first_images(self, order: np.ndarray, batches: int) -> np.ndarray:
        """The first ``batches`` batches of training images in ``order`` (BatchNorm recalibration's input)."""
        return self.arrays["train"][0][order[: batches * self.train.batch_size]]

    def train_dataset(self, order: np.ndarray, augment):
        """One epoch of training batches in ``order``, augmented on the fly."""
        images, labels = self.arrays["train"]
        return self._make(images[order], labels[order], augment)

    def dataset(self, split: str):
        """The whole split, unaugmented, in its stored order (built once)."""
        if split not in self._datasets:
            self._datasets[split] = self._make(*self.arrays[split])
        return self._datasets[split]

    def accuracy(self, trainer, split: str) -> float:
        """The classifier head's accuracy on a split (NaN for an empty one)."""
        if not len(self.arrays[split][1]):
            return float("nan")
        return trainer.evaluate(self.dataset(split), verbose=0, return_dict=True)["logits_accuracy"]

    def flip_averaged_accuracy(self, trainer, split: str) -> float:
        """The classifier head's accuracy with each image's logits averaged with its mirror image's (test-time flip
        averaging, as airbench scores CIFAR-10): meaningful only for a model trained on mirrored images."""
        images, labels = self.arrays[split]
        if not len(labels):
            return float("nan")
        logits = [trainer.predict(self._make(x, labels), verbose=0)["logits"] for x in (images, images[:, :, ::-1])]
        return float(np.mean(np.argmax(logits[0] + logits[1], axis=1) == labels))

    def _make(self, images: np.ndarray, labels: np.ndarray, augment=None):
        import tensorflow as tf

        onehot = np.eye(self.num_classes, dtype="float32")[labels]
        ds = tf.data.Dataset.from_tensor_slices((images, {"logits": onehot, "embedding": labels.astype("int32")}))
        ds = ds.batch(self.train.batch_size, drop_remainder=False)
        if augment is not None and len(augment.layers):

            def apply(x, y):
                pixels = augment(tf.cast(x, "float32"), training=True)
                return tf.cast(tf.clip_by_value(tf.round(pixels), 0, 255), "uint8"), y

            ds = ds.map(apply, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE)
