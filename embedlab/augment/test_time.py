"""Test-time augmentation: the weighted views of an image that a model's outputs are averaged over.

One definition for every place that averages views: the train stage's test accuracy, the embed stage, and the
queries of ``embedlab search`` and ``serve``, so a query is embedded exactly as the gallery was. The views are
airbench's (Jordan 2024): level 1 is the image and its left-right mirror; level 2 adds each of those shifted one pixel
up-left and one pixel down-right (reflect-padded; each shifted image then mirrored, as airbench does), the shifted
views sharing half of the weight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

View = Callable[[np.ndarray], np.ndarray]


def identity(images: np.ndarray) -> np.ndarray:
    """The images as they are."""
    return images


def mirror(images: np.ndarray) -> np.ndarray:
    """Each image of a ``(n, H, W, C)`` batch mirrored left-right."""
    return np.ascontiguousarray(images[:, :, ::-1])


def shift(images: np.ndarray, step: int) -> np.ndarray:
    """Each image moved by one pixel down-right (``step`` 1) or up-left (-1), the border reflect-padded."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    height, width = images.shape[1:3]
    start = 1 - step
    return np.ascontiguousarray(padded[:, start : start + height, start : start + width])


@dataclass(frozen=True)
class TestTimeViews:
    """The views to average over and their weights (powers of two summing to 1, so that averaging two views scales
    exactly and a single view is the plain forward pass)."""

    views: tuple[View, ...]
    weights: tuple[float, ...]

    @classmethod
    def of(cls, flip: bool, translate: bool) -> TestTimeViews:
        """The image (and its mirror, with ``flip``); with ``translate``, each of those shifted both ways too."""
        base: list[View] = [identity, mirror] if flip else [identity]
        if not translate:
            return cls(tuple(base), (1.0 / len(base),) * len(base))
        shifted = [lambda x, v=v, s=s: v(shift(x, s)) for s in (1, -1) for v in base]  # shift, then mirror
        return cls((*base, *shifted), (0.5 / len(base),) * len(base) + (0.5 / len(shifted),) * len(shifted))

    @property
    def plain(self) -> bool:
        """One view, the image itself: outputs are used as the model gives them (not averaged or normalised)."""
        return len(self.views) == 1

    def average(self, outputs: Iterable[np.ndarray]) -> np.ndarray:
        """The weighted sum of one output array per view (in ``views`` order; a generator keeps one in memory)."""
        return sum(weight * out for weight, out in zip(self.weights, outputs, strict=True))
