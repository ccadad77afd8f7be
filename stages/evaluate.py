"""evaluate: KNN retrieval metrics per model (+ raw-pixel baseline), plot data and example collages."""

from embedlab.errors import run_main
from embedlab.evaluation import run_evaluation
from embedlab.params import load_params


def main() -> None:
    params = load_params()
    results = run_evaluation(params.evaluate, params.model_names)
    k = params.evaluate.k
    for name, metrics in results.items():
        print(f"evaluate: {name:<14} mAP@{k} {metrics[f'map@{k}']:.4f}  P@1 {metrics['precision@1']:.4f}")


if __name__ == "__main__":
    run_main(main)
