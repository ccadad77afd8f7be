"""Model files: the embedding model saved reproducibly (``models/<bb>.keras``), the trainer's weights, and loading
them back with a clear message when they are missing.

Importing this module imports :mod:`embedlab.models.backbones`, which registers the custom layers a saved model needs.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras

from embedlab.core.errors import UserError, require_output
from embedlab.core.files import atomic_path
from embedlab.models.backbones import L2Normalize  # noqa: F401  (registers the custom layers with Keras)


def _renumber_shared_objects(node: object, numbers: dict[int, int]) -> None:
    """Keras tags objects shared between layers (dtype policies) with their Python ``id()``, a memory address that
    changes every run; number them in order of appearance instead (only equality within the file matters)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "shared_object_id":
                node[key] = numbers.setdefault(value, len(numbers) + 1)
            else:
                _renumber_shared_objects(value, numbers)
    elif isinstance(node, list):
        for value in node:
            _renumber_shared_objects(value, numbers)


def normalize_keras_file(path: str | Path) -> None:
    """Strip what makes two saves of the same model differ: the save time Keras writes into ``metadata.json``
    (``date_saved``) and as the zip timestamp of every member, and the memory addresses it writes as
    ``shared_object_id`` in ``config.json``. Identical weights then give byte-identical ``.keras`` files and DVC
    hashes."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        members = [(info, archive.read(info)) for info in archive.infolist()]
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for info, data in members:
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata, sort_keys=True).encode()
            elif info.filename == "config.json":
                config = json.loads(data)
                _renumber_shared_objects(config, {})
                data = json.dumps(config).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type, fixed.external_attr = info.compress_type, info.external_attr
            archive.writestr(fixed, data)


def save_embedding_model(model: keras.Model, path: str | Path) -> None:
    """Save atomically and reproducibly (see :func:`normalize_keras_file`)."""
    with atomic_path(path) as tmp:
        model.save(tmp)
        normalize_keras_file(tmp)


def save_weights(model: keras.Model, path: str | Path) -> None:
    """Keras' ``save_weights``, atomically: a kill mid-write never leaves a torn file."""
    with atomic_path(path) as tmp:
        model.save_weights(str(tmp))


def load_embedding_model(path: str | Path) -> keras.Model:
    """Load a saved embedding model (the custom layers are registered by importing this module); a missing or
    unreadable file is one line naming the stage that makes it."""
    path = Path(path)
    stage = f"train@{path.name.removesuffix('.keras')}"
    require_output(path, stage)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:
        reason = f"{type(err).__name__}: {err}".splitlines()[0][:200]
        raise UserError(f"{path} is not a readable Keras model ({reason}); rerun `dvc repro -f {stage}`") from err
