"""The download stage: turn ``data.source`` into ``data/raw`` (see :mod:`embedlab.data.raw`)."""

from __future__ import annotations

from pathlib import Path

from embedlab.core.files import atomic_dir
from embedlab.core.params import DataParams
from embedlab.data.download.cifar10 import write_cifar10
from embedlab.data.download.digits import write_digits
from embedlab.data.download.folder import write_folder


def fetch(params: DataParams, out: str | Path) -> int:
    """Write the dataset named by ``params.source`` to ``out`` atomically; return the number of usable images."""
    with atomic_dir(out) as tmp:
        if params.source == "digits":
            return write_digits(tmp)
        if params.source == "cifar10":
            return write_cifar10(tmp, params.url, params.path)
        assert params.path is not None  # enforced by DataParams
        count, _ = write_folder(tmp, params.path)
        return count
