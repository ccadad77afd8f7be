"""projector: TensorBoard Projector runs (embeddings, metadata, sprite, config) -> projector/<model>/."""

from pathlib import Path

from embedlab.data.prepare import Prepared
from embedlab.embeddings import load_sets
from embedlab.errors import run_main
from embedlab.params import load_params
from embedlab.projector import export_projector


def main() -> None:
    params = load_params()
    prepared = Prepared.open("data/prepared")
    for name, emb in load_sets(params.model_names, None).items():
        count = export_projector(emb, prepared, name, params.projector, Path("projector") / name)
        print(f"projector: {name}: {count} points -> projector/{name}/")
    print("open with: tensorboard --logdir projector")


if __name__ == "__main__":
    run_main(main)
