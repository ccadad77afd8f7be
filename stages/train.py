"""train@<backbone>: fine-tune one backbone into an embedding model (models/<bb>.keras, dvclive/<bb>, the classifier's
test accuracy in metrics/train/<bb>.json and every figure of the run in reports/train/<bb>.json)."""

import sys

from embedlab.core.errors import run_main
from embedlab.core.files import save_figure, write_json
from embedlab.core.params import load_params
from embedlab.models.io import save_embedding_model, save_weights
from embedlab.train.curves import draw_curves
from embedlab.train.loop import Trainer

# What `dvc metrics show` lists per backbone: the classifier's test accuracy (flip-averaged too, when the run trained
# on mirrors). Epochs, timings and CPU use go to reports/train/<bb>.json, out of `dvc metrics diff`.
HEADLINE = ("test_accuracy", "test_flip_averaged_accuracy")


def main() -> None:
    name = sys.argv[1]
    params = load_params()
    model_params, train_params = params.for_backbone(name)
    trainer = Trainer(
        name,
        model_params,
        train_params,
        params.augment,
        prepared_dir="data/prepared",
        work_dir=f"models/.work/{name}",  # resume checkpoints, removed once the outputs are written
        live_dir=f"dvclive/{name}",
    )
    result = trainer.run()
    save_embedding_model(result.embedding, f"models/{name}.keras")
    save_weights(result.trainer, f"models/{name}.weights.h5")
    write_json(f"metrics/train/{name}.json", {k: v for k, v in result.metrics.items() if k in HEADLINE})
    write_json(f"reports/train/{name}.json", result.metrics)  # every figure: epochs, timings, CPU use
    save_figure(draw_curves(result.history, name), f"plots/train/{name}_loss.png")
    trainer.discard_checkpoints()
    print(f"train@{name}: {result.metrics}")


if __name__ == "__main__":
    run_main(main)
