"""stack: combine the backbones' embeddings (fitted on the validation split) -> data/stack/stack.npz."""

from embedlab.core.errors import run_main
from embedlab.core.files import write_json
from embedlab.core.layout import STACK, Layout
from embedlab.core.params import load_params
from embedlab.embed.embeddings import load_sets
from embedlab.stack.fit import stack_embeddings, stack_metrics


def main() -> None:
    params = load_params()
    paths = Layout()
    sets = load_sets(params.stacked_backbones, None, paths)
    stacked, stacker, fit_report = stack_embeddings(sets, params.stack)
    metrics = stack_metrics(stacked, fit_report, seed=params.stack.seed)
    stacked.save(paths.embeddings(STACK))
    stacker.save(paths.stacker)
    write_json(paths.stack_report, metrics)  # the fit: method, weights, validation scores (evaluate scores the test)
    print(f"stack: {params.stack.method} of {', '.join(stacker.backbones)} -> {paths.embeddings(STACK)} {metrics}")


if __name__ == "__main__":
    run_main(main)
