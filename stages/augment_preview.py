"""augment_preview: plots/data/augmentations.png, a grid of training images and augmented copies (augment.*)."""

import numpy as np

from embedlab.augment.preview import draw_preview
from embedlab.core.errors import run_main
from embedlab.core.files import save_figure
from embedlab.core.layout import Layout
from embedlab.core.params import load_params
from embedlab.data.prepared import Prepared

ROWS = 8


def main() -> None:
    params = load_params()
    paths = Layout()
    data = Prepared.open(paths.prepared)
    train = data.split("train")
    rng = np.random.default_rng(params.data.seed)
    # One image of each of the first ROWS classes, so every row shows something different.
    picks = [rng.choice(train[data.labels[train] == label]) for label in np.unique(data.labels[train])[:ROWS]]
    titles = [data.class_names[data.labels[row]] for row in picks]
    figure = draw_preview(np.asarray(data.images[picks]), titles, params.augment, seed=params.data.seed)
    save_figure(figure, paths.plot("data", "augmentations.png"))


if __name__ == "__main__":
    run_main(main)
