"""Image collages: one row per query, the query then its results, for ``embedlab search --out`` and the evaluate
stage's example plots."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    """One cell: the pixels, a caption, and whether the result is right (green frame), wrong (red frame and
    caption) or not judged (``None``: a query, or a result without a known class)."""

    image: np.ndarray
    caption: str
    correct: bool | None = None
    bold: bool = False


def draw_collage(rows: list[list[Tile]], title: str | None = None, *, cell: tuple[float, float] = (1.8, 2.0)):
    """A matplotlib figure of the tiles, row by row (the caller saves it: ``core.files.save_figure``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(row) for row in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(cell[0] * columns, cell[1] * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row):
                ax.axis("off")
                continue
            tile = row[c]
            ax.imshow(tile.image, interpolation="nearest")
            color = "red" if tile.correct is False else "black"
            ax.set_title(tile.caption, fontsize=7, color=color, fontweight="bold" if tile.bold else "normal")
            if tile.correct is not None:
                for spine in ax.spines.values():
                    spine.set_edgecolor("tab:green" if tile.correct else "red")
                    spine.set_linewidth(1 if tile.correct else 3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
