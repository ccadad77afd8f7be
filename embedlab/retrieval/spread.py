"""Whether an embedding can rank at all: the spread of its cosine similarities between distinct images.

A model whose embeddings collapsed (every image mapped to nearly one direction) still returns neighbours, so its
mAP@k alone does not say what went wrong; and to a stacker its block looks harmless, because a near-constant block
adds nearly the same number to every similarity and so leaves the ranking to the other blocks, whatever weight it
is given. Evaluate names such a model, and the stack leaves it out (:mod:`embedlab.stack.fit`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedlab.embed.embeddings import l2_normalize

# Below this standard deviation of the cosine similarity between distinct images, an embedding is "collapsed".
# Measured: the four digits backbones spread 0.32-0.34 on the test split, raw pixels 0.09 (digits) and 0.08
# (CIFAR-10); a VGG16 that collapsed on a small photo folder had every pairwise cosine >= 0.9992.
COLLAPSED_BELOW = 0.01
SAMPLE = 2000  # images the spread is measured on (every pair among them): a seeded sample of larger sets


@dataclass(frozen=True)
class Spread:
    """Mean and standard deviation of the cosine similarity between distinct images."""

    mean: float
    sd: float

    @property
    def collapsed(self) -> bool:
        """Too little spread to rank by (:data:`COLLAPSED_BELOW`)."""
        return self.sd < COLLAPSED_BELOW

    def describe(self) -> str:
        """The spread in words, for a warning line."""
        return f"cosine similarity between images {self.mean:.4f} ± {self.sd:.4f}"


def cosine_spread(vectors: np.ndarray, *, seed: int = 0, sample: int = SAMPLE) -> Spread:
    """The :class:`Spread` of ``vectors`` (at least two rows), over a seeded sample of at most ``sample`` rows."""
    if len(vectors) < 2:
        raise ValueError("the spread of similarities needs at least two images")
    rows = np.arange(len(vectors))
    if len(rows) > sample:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), size=sample, replace=False))
    unit = l2_normalize(np.asarray(vectors[rows], np.float32)).astype(np.float64)
    similarity = (unit @ unit.T)[~np.eye(len(unit), dtype=bool)]
    return Spread(float(similarity.mean()), float(similarity.std()))


def health(spread: Spread, map_at_k: float, raw_pixels_map_at_k: float | None) -> str:
    """``collapsed``, ``below raw pixels`` (it ranks worse than the flattened pixels) or ``ok``."""
    if spread.collapsed:
        return "collapsed"
    if raw_pixels_map_at_k is not None and map_at_k < raw_pixels_map_at_k:
        return "below raw pixels"
    return "ok"
