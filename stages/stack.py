"""stack: combine the backbones' embeddings (fitted on the validation split) -> data/stack/stack.npz."""

from embedlab.core.errors import run_main
from embedlab.core.files import write_json
from embedlab.core.params import load_params
from embedlab.embed.embeddings import load_sets
from embedlab.stack.fit import stack_embeddings, stack_metrics


def main() -> None:
    params = load_params()
    sets = load_sets(params.stacked_backbones, None)
    stacked, stacker, fit_report = stack_embeddings(sets, params.stack)
    metrics = stack_metrics(stacked, fit_report, seed=params.stack.seed)
    stacked.save("data/stack/stack.npz")
    stacker.save("models/stack.npz")
    write_json("reports/stack.json", metrics)  # the fit: method, weights, validation scores (evaluate scores the test)
    print(f"stack: {params.stack.method} of {', '.join(params.stacked_backbones)} -> data/stack/stack.npz {metrics}")


if __name__ == "__main__":
    run_main(main)
