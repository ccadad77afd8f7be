"""Where the pipeline's files live: the one place that names them.

Stage scripts write their outputs here, the commands (``search``, ``serve``, ``export``, ``results``) read them
from here, and ``dvc.yaml`` declares the same paths (``tests/core/test_layout.py`` checks each stage's). A
:class:`Layout` is made once from the repository root a command is given and handed down, so no module builds a
path of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STACK = "stack"  # the stacking ensemble's model name, beside the backbones' names
RAW_PIXELS = "raw_pixels"  # the baseline evaluate and cluster score: the prepared pixels as the embedding


@dataclass(frozen=True)
class Layout:
    """The pipeline's files under ``root`` (a clone of the repository, or a results folder)."""

    root: Path = Path()

    # -- inputs and data --------------------------------------------------------------------------------------
    @property
    def params(self) -> Path:
        """``params.yaml``."""
        return self.root / "params.yaml"

    @property
    def lock(self) -> Path:
        """``dvc.lock``: what the last ``dvc repro`` recorded."""
        return self.root / "dvc.lock"

    @property
    def raw(self) -> Path:
        """download's images, one folder per split and class."""
        return self.root / "data" / "raw"

    @property
    def prepared(self) -> Path:
        """preprocess's arrays: the resized images, the index and ``info.json``."""
        return self.root / "data" / "prepared"

    # -- models and embeddings ----------------------------------------------------------------------------------
    def model(self, name: str) -> Path:
        """train's embedding model: uint8 image in, unit embedding out."""
        return self.root / "models" / f"{name}.keras"

    def trainer_weights(self, name: str) -> Path:
        """train's trainer weights (the embedding model plus its classifier head)."""
        return self.root / "models" / f"{name}.weights.h5"

    def checkpoints(self, name: str) -> Path:
        """train's resume checkpoints, removed once the model is saved."""
        return self.root / "models" / ".work" / name

    def live(self, name: str) -> Path:
        """train's dvclive log."""
        return self.root / "dvclive" / name

    @property
    def embeddings_dir(self) -> Path:
        """embed's output folder (``embed@<bb>`` writes one file in it)."""
        return self.root / "data" / "embeddings"

    def embeddings(self, model: str) -> Path:
        """A model's embeddings of every prepared image: ``embed@<bb>``'s, or the stack's."""
        return self.root / "data" / STACK / "stack.npz" if model == STACK else self.embeddings_dir / f"{model}.npz"

    @property
    def stacker(self) -> Path:
        """stack's fitted stacker (NumPy arrays: it applies to a query's backbone embeddings)."""
        return self.root / "models" / "stack.npz"

    # -- metrics, reports and plots -----------------------------------------------------------------------------
    def metrics(self, kind: str | None = None, name: str | None = None) -> Path:
        """``metrics/<kind>/<name>.json``: the headline figures ``dvc metrics show`` lists (train, retrieval,
        cluster); without ``name`` the kind's folder, without either the metrics folder."""
        folder = self.root / "metrics" if kind is None else self.root / "metrics" / kind
        return folder if name is None else folder / f"{name}.json"

    def report(self, kind: str, name: str | None = None) -> Path:
        """``reports/<kind>/<name>.json``: every figure a stage has of a model (train, retrieval, cluster), beside
        the headline in :meth:`metrics`; without ``name``, the kind's folder."""
        folder = self.root / "reports" / kind
        return folder if name is None else folder / f"{name}.json"

    @property
    def data_report(self) -> Path:
        """preprocess's counts per split and class, and the images it skipped."""
        return self.root / "reports" / "data.json"

    @property
    def stack_report(self) -> Path:
        """stack's fit: the method, the weights and the validation scores."""
        return self.root / "reports" / "stack.json"

    def plot(self, *parts: str) -> Path:
        """``plots/<parts>``: the data ``dvc plots show`` draws, and pictures."""
        return self.root.joinpath("plots", *parts)

    def projector(self, model: str | None = None) -> Path:
        """projector's TensorBoard runs, one folder per model."""
        return self.root / "projector" if model is None else self.root / "projector" / model
