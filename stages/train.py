"""train@<backbone>: fine-tune one backbone into an embedding model (models/<bb>.keras, dvclive/<bb>, metrics)."""

import sys

from embedlab.errors import run_main
from embedlab.fsutil import write_json
from embedlab.params import load_params
from embedlab.training import Trainer, draw_curves


def main() -> None:
    name = sys.argv[1]
    params = load_params()
    model_params, train_params = params.for_backbone(name)
    result = Trainer(name, model_params, train_params, params.augment).run()
    write_json(f"metrics/train/{name}.json", result.metrics)
    draw_curves(result.history, name, f"plots/train/{name}_loss.png")
    print(f"train@{name}: {result.metrics}")


if __name__ == "__main__":
    run_main(main)
