"""Where an epoch's time goes: seconds per part of every epoch, for the train metrics and the throughput benchmark."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

# "other" is the rest of the epoch (logging, reseeding, early-stopping bookkeeping), so the parts add up to it.
EPOCH_PARTS = ("fit", "recalibrate", "validate", "checkpoint", "other")


class StopWatch:
    """Wall and process-CPU seconds per named part, epoch by epoch."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.epochs: list[dict[str, float]] = []
        self._epoch_start: tuple[float, float] | None = None

    @contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        start, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.current[part] += time.perf_counter() - start
            self.current["cpu"] += time.process_time() - cpu

    def start_epoch(self) -> None:
        """Open an epoch: from here to ``end_epoch`` every second is booked, in a named part or as "other"."""
        self._epoch_start = (time.perf_counter(), time.process_time())

    def end_epoch(self, images: int) -> None:
        """Close the current epoch, which trained on ``images`` images."""
        if self._epoch_start is not None:
            wall, cpu = time.perf_counter() - self._epoch_start[0], time.process_time() - self._epoch_start[1]
            named = sum(self.current.get(part, 0.0) for part in EPOCH_PARTS)
            self.current["other"] = max(wall - named, 0.0)
            self.current["cpu"] = cpu
            self._epoch_start = None
        self.epochs.append({**self.current, "images": images})
        self.current = defaultdict(float)

    def images_per_second(self, parts: tuple[str, ...] = EPOCH_PARTS, skip: int = 0) -> float:
        """Training images per second of the given parts, over the epochs after the first ``skip``."""
        epochs = self.epochs[skip:]
        seconds = sum(epoch.get(part, 0.0) for epoch in epochs for part in parts)
        return round(sum(epoch["images"] for epoch in epochs) / seconds, 1) if seconds else 0.0

    def cores_used(self, skip: int = 0) -> float:
        """Process CPU seconds per wall second over the epochs (2.0 = both cores of a 2-core machine busy)."""
        epochs = self.epochs[skip:]
        seconds = sum(epoch.get(part, 0.0) for epoch in epochs for part in EPOCH_PARTS)
        return round(sum(epoch.get("cpu", 0.0) for epoch in epochs) / seconds, 2) if seconds else 0.0

    def totals(self) -> dict[str, float]:
        """Seconds per epoch part, summed over the epochs."""
        return {part: sum(epoch.get(part, 0.0) for epoch in self.epochs) for part in EPOCH_PARTS}
