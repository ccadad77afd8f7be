"""The train stage's picture: loss and accuracy per epoch, train against val."""

from __future__ import annotations


def draw_curves(history: list[dict[str, float]], name: str):
    """A matplotlib figure of the loss and accuracy curves (the DVC plots show the same data interactively)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] + 1 for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for split, style in (("train", "-o"), ("val", "-s")):
            ax.plot(epochs, [row[f"{split}/{metric}"] for row in history], style, label=split, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{name}: training curves")
    fig.tight_layout()
    return fig
