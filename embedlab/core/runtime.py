"""How TensorFlow runs on this machine: one place, applied before TensorFlow is imported.

- **oneDNN on everywhere.** TensorFlow enables its oneDNN kernels by itself only on AVX-512 CPUs; on AVX2-only CPUs
  it falls back to kernels that train 2–5× slower and round differently. We turn oneDNN on for every CPU so the
  same params get the same kernel family wherever they run. A user's own ``TF_ENABLE_ONEDNN_OPTS`` still wins.
- **Quiet start-up.** ``TF_CPP_MIN_LOG_LEVEL`` hides TensorFlow's C++ log, but a few lines (``port.cc``,
  ``cudart_stub.cc``) are printed through Abseil before that setting is read, on every import. They are filtered
  out of stderr while ``tensorflow`` is first imported; any other line printed then still reaches stderr.
  ``TF_CPP_MIN_LOG_LEVEL=0`` shows everything again.
- **Input pipelines without autotuning.** tf.data's autotuning thread sleeps up to 60 s between rounds, and
  deleting an iterator, which Keras does at the end of every ``fit``, ``evaluate`` and ``predict``, waits for it to
  wake: after each full-scale CIFAR-10 epoch the machine sat idle for 30-60 s (:func:`finish_pipeline`).
- **Forward passes sized by pixels.** Embedding and scoring batches are cut to a pixel budget
  (:func:`forward_batch_size`), so large images do not multiply activation memory.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Abseil's start-up lines, printed before TensorFlow reads TF_CPP_MIN_LOG_LEVEL: informational only.
_STARTUP_NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|I\d{4} [\d:. ]+\d+ (port|cudart_stub|cpu_feature_guard)\.cc:\d+\] .*)$"
)

# CPU features that decide which TensorFlow/oneDNN kernels run (and so speed and rounding).
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


# A forward pass without gradients (embedding, scoring) holds at most this many pixels: activation memory grows with
# a batch's pixels, and at 224 px a 256-image batch of smallnet took 8.6 GB (benchmarks/cost_curve.py). 256 images
# of 64 px, so 32 and 64 px data keep the batch sizes asked for.
FORWARD_BATCH_PIXELS = 256 * 64 * 64


# Batches an input pipeline reads ahead of the model: one being consumed, one ready.
PREFETCH_BATCHES = 2


def finish_pipeline(dataset):
    """``dataset`` reading ``PREFETCH_BATCHES`` batches ahead, with tf.data's autotuning off.

    Why off: the autotuning thread waits between optimisation rounds, up to 60 s once an iterator has run for a
    minute, and an iterator's deletion waits for that thread to wake. Keras deletes its iterator at the end of every
    ``fit``, so each 90-second training epoch of smallnet on CIFAR-10 was followed by 30-60 s of an idle machine
    (the whole run: 1.3 of 2 cores busy). Our pipelines have nothing to tune: one batch is read or augmented at a
    time, in order (the random layers must draw in sequence), far faster than the model consumes it."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(PREFETCH_BATCHES).with_options(options)


def forward_batch_size(requested: int, side: int) -> int:
    """Images per forward pass of ``side``-pixel images: ``requested``, fewer where it would exceed the pixel budget."""
    return max(1, min(requested, FORWARD_BATCH_PIXELS // (side * side)))


def configure_tensorflow_environment() -> None:
    """Set TensorFlow's environment defaults (the user's own values win) and silence its import noise."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    quiet = os.environ["TF_CPP_MIN_LOG_LEVEL"] not in ("0", "1")
    if quiet and "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


class _QuietImport(importlib.abc.MetaPathFinder):
    """Wraps the first ``import tensorflow`` in :func:`_filtered_stderr`, then steps aside."""

    def find_spec(self, fullname, path, target=None):
        """Wrap TensorFlow's own loader the first time ``tensorflow`` is imported; leave every other import alone."""
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec):
        """TensorFlow's own module creation."""
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        """Run TensorFlow's import with its known start-up lines filtered from stderr."""
        module.__loader__ = self.inner
        with _filtered_stderr(_STARTUP_NOISE):
            self.inner.exec_module(module)


@contextlib.contextmanager
def _filtered_stderr(noise: re.Pattern[bytes]) -> Iterator[None]:
    """Capture file descriptor 2 (C++ writes there directly), then replay every line that is not ``noise``."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr (embedded interpreters): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().splitlines(keepends=True) if not noise.match(line.rstrip())]
            if kept:
                os.write(2, b"".join(kept))


def cpu_description(cpuinfo: str | None = None) -> dict[str, object]:
    """The CPU model, core count and the kernel-relevant feature flags, for every throughput figure we print.

    The model name and flags alone do not tell machines apart: two "AMD EPYC" with the same AVX-512 flags ran float32
    matmuls 2.2x apart (docs/performance.md), so the CPU family and model numbers are part of the name.
    ``cpuinfo``: the text of /proc/cpuinfo (read when None)."""
    if cpuinfo is None:
        cpuinfo = ""
        with contextlib.suppress(OSError):
            cpuinfo = Path("/proc/cpuinfo").read_text()
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's lines
    model = fields.get("model name", "unknown")
    if fields.get("cpu family") and fields.get("model"):
        model += f" (family {fields['cpu family']}, model {fields['model']})"
    flags = set(fields.get("flags", "").split())
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "flags": [flag for flag in KERNEL_FLAGS if flag in flags],
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", ""),
        "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "all"),
    }
