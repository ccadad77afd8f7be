"""A fitted stacking ensemble, and what each ``stack.method`` is: one embedding from several backbones' embeddings.

Methods (``stack.method``):

* ``concat``: the backbones' unit embeddings side by side, scaled by 1/√B, so cosine similarity is the mean of the
  backbones' cosine similarities. Nothing is fitted.
* ``pca``: the concatenation, centred and PCA-whitened to ``stack.dim`` components, then L2-normalised. Whitening
  divides each component by √(variance + s·mean variance), s = ``stack.whiten_shrinkage``: plain whitening (s = 0)
  blows the many low-variance, within-class noise directions up to the size of the class-separating ones (measured
  on digits: MAP@R 0.39 at 128 components, 0.99 with s = 1).
* ``weighted``: one learned non-negative weight per backbone (softmax of free logits); cosine similarity becomes the
  weighted mean of the backbones' cosine similarities.
* ``mlp``: a small meta-network (dense → ReLU → dense → L2) trained with the same losses as ``train``.
* ``select`` (default): per-backbone weights chosen by what the stack is for, retrieval. Each validation image
  queries the other validation images; starting from the best single backbone (share 1, others 0), coordinate
  ascent tries each backbone at each share of ``fit.SELECT_GRID`` and keeps a change only when the validation
  mAP@``stack.select_k`` rises. So on the validation split the stack is never worse than its best member, and a
  backbone that only adds noise keeps weight 0. Cosine similarity becomes Σ w_b·cos_b / Σ w_b, as in ``weighted``,
  with w_b ∝ share_b / (spread of backbone b's cosines): a share is what the block contributes to the ranking.

A backbone whose validation embeddings collapsed is left out before any method is fitted (:mod:`embedlab.stack.fit`).

Learned stackers are fitted on the validation split only (:mod:`embedlab.stack.fit`).

A fitted :class:`Stacker` is a few NumPy arrays (``models/stack.npz``) and applies to new images in NumPy, which
is how ``embedlab search --model stack`` embeds a query: each base model, then the stacker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedlab.core.files import write_npz
from embedlab.core.schema import StackMethod
from embedlab.embed.embeddings import l2_normalize


@dataclass
class Stacker:
    """A fitted stacker: the method, the backbones in order, and the arrays that apply it to new embeddings."""

    method: StackMethod
    backbones: list[str]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def contributing(self) -> list[str]:
        """The backbones whose embeddings change the result: ``select`` and ``weighted`` may give a backbone weight 0,
        and its block is then multiplied by 0, so a caller may pass zeros instead of running it."""
        if self.method in ("weighted", "select"):
            return [name for name, w in zip(self.backbones, self.arrays["weights"], strict=True) if w > 0]
        return list(self.backbones)

    def transform(self, blocks: list[np.ndarray]) -> np.ndarray:
        """Combine the backbones' embeddings of the same images (one array per backbone, in order)."""
        if len(blocks) != len(self.backbones):
            raise ValueError(f"expected {len(self.backbones)} embedding blocks, got {len(blocks)}")
        x = np.concatenate([np.asarray(b, np.float32) for b in blocks], axis=1)
        match self.method:
            case "concat":
                return l2_normalize(x)
            case "weighted" | "select":
                widths_and_weights = zip(blocks, self.arrays["weights"], strict=True)
                scale = np.concatenate([np.full(b.shape[1], np.sqrt(w), np.float32) for b, w in widths_and_weights])
                return l2_normalize(x * scale)
            case "pca":
                return l2_normalize((x - self.arrays["mean"]) @ self.arrays["projection"])
            case "mlp":
                hidden = np.maximum(x @ self.arrays["w1"] + self.arrays["b1"], 0)
                return l2_normalize(hidden @ self.arrays["w2"] + self.arrays["b2"])
            case other:
                raise ValueError(f"unknown stack method {other!r}")

    def save(self, path: str | Path) -> None:
        """``models/stack.npz``: the method, the backbone names and the fitted arrays (no pickle)."""
        write_npz(
            path,
            {
                "method": np.asarray(self.method),
                "backbones": np.asarray(self.backbones, dtype=str),
                **{f"param_{k}": np.asarray(v, np.float32) for k, v in self.arrays.items()},
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> Stacker:
        """Read ``models/stack.npz``."""
        with np.load(path, allow_pickle=False) as data:
            arrays = {k.removeprefix("param_"): data[k] for k in data.files if k.startswith("param_")}
            return cls(str(data["method"]), [str(b) for b in data["backbones"]], arrays)
