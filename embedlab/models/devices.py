"""Where and how TensorFlow computes: seeds and deterministic ops, the distribution strategy, the dtype policy."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np

from embedlab.core.errors import UserError


def configure_determinism(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow and make TensorFlow's ops deterministic: the same params then give the same
    weights on the same machine (tests/train/test_loop.py checks byte-identical models)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def init_seed(seed: int, layer: int) -> int:
    """The initialiser seed of a backbone's ``layer``-th convolution under ``train.seed``: independent streams per
    layer and per seed (``seed + layer`` would give seed 1's first layer seed 0's second layer's draw)."""
    return int(np.random.SeedSequence([seed, layer]).generate_state(1)[0])


def make_strategy(name: Literal["auto", "mirrored", "multiworker"]):
    """The ``tf.distribute`` strategy ``train.strategy`` names.

    ``auto``: all local GPUs when there are several, else the default; ``mirrored``: every local GPU (or every
    logical CPU when there is none); ``multiworker``: the cluster described by ``TF_CONFIG``.
    """
    import tensorflow as tf

    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise UserError(
                "train.strategy=multiworker needs TF_CONFIG describing the cluster (docs/training.md, Scaling out)"
            )
        # before anything starts TensorFlow's runtime (listing devices does): the cluster is joined at start-up
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    match name:
        case "mirrored":
            return tf.distribute.MirroredStrategy(gpus or [d.name for d in tf.config.list_logical_devices("CPU")])
        case "auto":
            return tf.distribute.MirroredStrategy(gpus) if len(gpus) > 1 else tf.distribute.get_strategy()
        case other:
            raise ValueError(f"unknown train.strategy {other!r}")


def is_chief(strategy) -> bool:
    """Whether this process writes the run's outputs, checkpoints and log: always, except on a multi-worker cluster's
    workers other than its chief (the ``chief`` task, or worker 0 when the cluster names none, as TensorFlow does)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


def check_workers_agree(strategy, epoch: int, name: str) -> None:
    """On a multi-worker cluster, stop every worker with one clear line when they would resume from different epochs
    (a worker that cannot see the chief's checkpoint folder starts afresh): they would otherwise wait for each other
    forever. The sum of the epochs equals ``epoch`` times the number of workers on every worker only when all agree."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    total = strategy.reduce("SUM", tf.constant(float(epoch)), axis=None)
    workers = strategy.num_replicas_in_sync
    if float(total) != epoch * workers:
        raise UserError(
            f"train@{name}: this worker resumes after epoch {epoch} but the {workers} workers do not agree (their "
            f"epochs sum to {float(total):g}): every worker must see the chief's models/.work folder "
            "(docs/training.md, Scaling out)"
        )


@contextmanager
def stopped_workers_named(name: str) -> Iterator[None]:
    """Turn a multi-worker run's failed collective step (another worker stopped or was killed) into one line that
    says what to do."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.UnavailableError as error:
        raise UserError(
            f"train@{name}: a worker of the cluster stopped ({str(error).splitlines()[0][:160]}); start every "
            "worker again: they resume from the chief's last checkpoint in models/.work"
        ) from error


def work_around_keras_multiworker(model, strategy, dataset) -> None:
    """Let ``model`` fit and evaluate under ``MultiWorkerMirroredStrategy`` in Keras 3.15, whose multi-worker path
    fails twice (keras-team/keras#20585, open):

    * before each ``fit``/``evaluate`` it reduces one distributed input batch with ``strategy.reduce`` over the
      batch's nested structure, which the collective strategy rejects ("Attempt to convert a value (PerReplica ...)
      to a Tensor"), only to build the metrics and the optimizer: they are built from one local batch of ``dataset``
      instead;
    * it averages each step's scalar loss and metrics across workers along axis 0, which a scalar does not have
      ("Invalid reduction dimension 0"): scalars are averaged whole, so every worker sees the same values and takes
      the same early-stopping decision.

    Other strategies are left as they are."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as keras_tf_trainer

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    sample_batch = next(iter(dataset))

    def build(iterator=None, data_batch=None) -> None:
        with strategy.scope():
            model._symbolic_build(data_batch=sample_batch)

    model._maybe_symbolic_build = build
    if getattr(keras_tf_trainer.reduce_per_replica, "_embedlab", False):
        return
    keras_reduce = keras_tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and keras_tf_trainer._collective_all_reduce_multi_worker(strategy):
            return tf.nest.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
        return keras_reduce(values, strategy, reduction)

    reduce_per_replica._embedlab = True
    keras_tf_trainer.reduce_per_replica = reduce_per_replica


def set_mixed_precision(setting: Literal["auto", "on", "off"]) -> str:
    """Set Keras' global dtype policy as ``train.mixed_precision`` says; return the policy's name.

    ``auto`` turns mixed precision on with a GPU only: on the CPU measured (AVX512_BF16 without AMX,
    docs/performance.md) bfloat16 paid off for VGG16 alone and cost DenseNet121 retrieval quality. ``on`` uses float16
    on a GPU and bfloat16 on a CPU (CPUs have no fast float16 kernels).
    """
    import keras
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    match setting:
        case "on":
            policy = "mixed_float16" if gpu else "mixed_bfloat16"
        case "auto":
            policy = "mixed_float16" if gpu else "float32"
        case "off":
            policy = "float32"
        case other:
            raise ValueError(f"unknown train.mixed_precision {other!r}")
    keras.mixed_precision.set_global_policy(policy)
    return policy
