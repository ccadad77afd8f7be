"""What a run keeps track of between epochs, beside the loop: early stopping with the best weights, and the
dvclive log. Both read and write the run's :class:`~embedlab.train.checkpoints.RunState`, so a resumed run carries
on exactly where the checkpoint left off."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from embedlab.train.checkpoints import RunState

# An epoch counts as better only when its val loss drops by more than this: float noise in the last digits (a
# recalibrated BatchNorm, a different summation order) must not reset the patience counter.
MIN_VAL_LOSS_IMPROVEMENT = 1e-6


class EarlyStopping:
    """``train.patience`` on the val loss, keeping the best epoch's weights in memory (the run ends with them)."""

    def __init__(self, state: RunState, patience: int, best_weights: list[np.ndarray] | None) -> None:
        self.state, self.patience, self.best_weights = state, patience, best_weights

    def update(self, row: dict[str, float], weights: Any) -> None:
        """Book one epoch's ``row``; ``weights()`` gives the model's weights, read only when the epoch is the best."""
        state = self.state
        state.history.append(row)
        state.epoch = int(row["epoch"]) + 1
        if row["val/loss"] < state.best_val_loss - MIN_VAL_LOSS_IMPROVEMENT:
            state.best_val_loss, state.best_epoch, state.wait = row["val/loss"], int(row["epoch"]), 0
            self.best_weights = weights()
        else:
            state.wait += 1
        state.stopped_early = state.wait >= self.patience


class TrainingLog:
    """The dvclive log (``dvclive/<bb>``), started afresh with exactly the checkpoint's history: epochs logged after
    the last checkpoint of a killed run are replayed by the resumed run, never duplicated."""

    def __init__(self, folder: Path, history: list[dict[str, float]]) -> None:
        from dvclive import Live

        if folder.exists():
            shutil.rmtree(folder)
        self.live = Live(dir=str(folder), dvcyaml=False, save_dvc_exp=False, report=None)
        for row in history:
            self.log(row)

    def log(self, row: dict[str, float]) -> None:
        """One epoch's figures as one dvclive step."""
        for key, value in row.items():
            if key != "epoch":
                self.live.log_metric(key, value)
        self.live.next_step()

    def end(self) -> None:
        """Close the log."""
        self.live.end()
