"""Where and how TensorFlow computes: seeds and deterministic ops, the distribution strategy, the dtype policy."""

from __future__ import annotations

import os
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

    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    match name:
        case "multiworker":
            if "TF_CONFIG" not in os.environ:
                raise UserError(
                    "train.strategy=multiworker needs TF_CONFIG describing the cluster (docs/training.md, Scaling out)"
                )
            return tf.distribute.MultiWorkerMirroredStrategy()
        case "mirrored":
            return tf.distribute.MirroredStrategy(gpus or [d.name for d in tf.config.list_logical_devices("CPU")])
        case "auto":
            return tf.distribute.MirroredStrategy(gpus) if len(gpus) > 1 else tf.distribute.get_strategy()
        case other:
            raise ValueError(f"unknown train.strategy {other!r}")


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
