"""stack: combine the backbones' embeddings (fitted on the validation split) -> data/stack/stack.npz."""

from embedlab.errors import run_main
from embedlab.params import load_params
from embedlab.stacking import run_stack


def main() -> None:
    params = load_params()
    metrics = run_stack(params.stacked_backbones, params.stack)
    print(f"stack: {params.stack.method} of {', '.join(params.stacked_backbones)} -> data/stack/stack.npz {metrics}")


if __name__ == "__main__":
    run_main(main)
