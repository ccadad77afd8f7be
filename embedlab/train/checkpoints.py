"""Resume checkpoints of a training run: what must survive a kill, and the order that keeps it consistent.

A checkpoint is three files in the run's work folder: the trainer's weights with optimizer state
(``epoch-NNNN.weights.h5``), the best epoch's weights (``best-NNNN.npz``) and ``state.json``, which names both.
``state.json`` is written last and atomically, so it is the commit point: a kill before it leaves the previous
checkpoint intact (new files are unreferenced and swept next time), a kill after it leaves a complete new one.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from embedlab.core.files import atomic_path, write_json

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """Progress of one run: epochs finished, early-stopping counters and the per-epoch history."""

    fingerprint: str
    epoch: int = 0  # epochs finished
    best_val_loss: float = float("inf")
    best_epoch: int = -1
    wait: int = 0
    stopped_early: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    weights_file: str | None = None  # trainer weights + optimizer state after ``epoch`` epochs
    best_file: str | None = None  # weights of ``best_epoch``


def fingerprint(*parts: object) -> str:
    """A short stable hash of everything a checkpoint depends on (params, data index)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class CheckpointStore:
    """The work folder of one run (``models/.work/<backbone>``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.state_file = folder / "state.json"

    def load(self, fp: str) -> RunState:
        """The saved state when it belongs to the same params and data; otherwise a fresh one (stale files go)."""
        if self.state_file.exists():
            saved = json.loads(self.state_file.read_text())
            files_present = all(
                (self.folder / name).exists() for name in (saved.get("weights_file"), saved.get("best_file")) if name
            )
            if saved.get("fingerprint") == fp and files_present:
                log.info("resuming after epoch %d from %s", saved["epoch"], self.folder)
                return RunState(**saved)
            log.info("discarding checkpoint in %s: params or data changed", self.folder)
        shutil.rmtree(self.folder, ignore_errors=True)
        return RunState(fingerprint=fp)

    def save(self, state: RunState, trainer, best_weights: list[np.ndarray]) -> None:
        """Write the weights, then the best weights when they changed, then commit with ``state.json``."""
        state.weights_file = f"epoch-{state.epoch:04d}.weights.h5"
        with atomic_path(self.folder / state.weights_file) as tmp:
            trainer.save_weights(str(tmp))
        best_file = f"best-{state.best_epoch + 1:04d}.npz"
        if best_file != state.best_file or not (self.folder / best_file).exists():
            with atomic_path(self.folder / best_file) as tmp, tmp.open("wb") as handle:
                np.savez(handle, *best_weights)
            state.best_file = best_file
        write_json(self.state_file, asdict(state))
        for stale in self.folder.glob("*"):
            if stale.name not in (state.weights_file, state.best_file, self.state_file.name):
                stale.unlink()

    def weights_path(self, state: RunState) -> Path:
        """The checkpoint's trainer weights (with optimizer state)."""
        assert state.weights_file, "no checkpoint saved yet"
        return self.folder / state.weights_file

    def best_weights(self, state: RunState) -> list[np.ndarray]:
        """The best epoch's weights, as ``get_weights`` returned them."""
        assert state.best_file, "no checkpoint saved yet"
        with np.load(self.folder / state.best_file) as best:
            return [best[f"arr_{i}"] for i in range(len(best.files))]

    def for_worker(self, name: str) -> CheckpointStore:
        """The store of a multi-worker cluster's other workers: a scratch copy of this one (the chief's), so every
        worker resumes from the same state, then written into by that worker alone and removed when it exits: its
        checkpoints are nobody's outputs."""
        scratch = Path(tempfile.mkdtemp(prefix=f"embedlab-worker-{name}-"))
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)  # also when the run fails
        with contextlib.suppress(FileNotFoundError, shutil.Error):  # none yet, or a stale one the chief discards
            shutil.copytree(self.folder, scratch / "work")
        return CheckpointStore(scratch / "work")

    def discard(self) -> None:
        """The run finished: its outputs are written, the work folder goes."""
        shutil.rmtree(self.folder, ignore_errors=True)


def load_model_only(model, path: Path) -> None:
    """Load a checkpoint's model variables; its optimizer state does not fit the new phase's optimizer."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(path)
