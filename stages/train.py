"""train@<backbone>: fine-tune one backbone into an embedding model (models/<bb>.keras, dvclive/<bb>, the classifier's
test accuracy in metrics/train/<bb>.json and every figure of the run in reports/train/<bb>.json)."""

import sys

from embedlab.core.errors import run_main
from embedlab.core.files import save_figure, write_json
from embedlab.core.layout import Layout
from embedlab.core.params import load_params
from embedlab.models.io import save_embedding_model, save_weights
from embedlab.train.curves import draw_curves
from embedlab.train.loop import Trainer

# What `dvc metrics show` lists per backbone: the classifier's test accuracy (averaged over flips, and over flips and
# 1 px shifts, when the run trained on them). Epochs, timings and CPU use go to reports/train/<bb>.json, out of
# `dvc metrics diff`.
HEADLINE = ("test_accuracy", "test_flip_averaged_accuracy", "test_flip_translate_averaged_accuracy")


def main() -> None:
    name = sys.argv[1]
    params = load_params()
    paths = Layout()
    model_params, train_params = params.for_backbone(name)
    trainer = Trainer(
        name,
        model_params,
        train_params,
        params.augment,
        prepared_dir=paths.prepared,
        work_dir=paths.checkpoints(name),  # resume checkpoints, removed once the outputs are written
        live_dir=paths.live(name),
    )
    result = trainer.run()
    if not trainer.chief:  # a multi-worker cluster's other workers: the chief writes the outputs
        trainer.checkpoints.discard()
        print(f"train@{name}: worker finished; the chief wrote the outputs")
        return
    save_embedding_model(result.embedding, paths.model(name))
    save_weights(result.trainer, paths.trainer_weights(name))
    write_json(paths.metrics("train", name), {k: v for k, v in result.metrics.items() if k in HEADLINE})
    write_json(paths.report("train", name), result.metrics)  # every figure: epochs, timings, CPU use
    save_figure(draw_curves(result.history, name), paths.plot("train", f"{name}_loss.png"))
    trainer.checkpoints.discard()
    print(f"train@{name}: {result.metrics}")


if __name__ == "__main__":
    run_main(main)
