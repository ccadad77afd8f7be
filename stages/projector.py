"""projector: TensorBoard Projector runs (embeddings, metadata, sprite, config) -> projector/<model>/."""

from embedlab.cluster.projector import projector_run
from embedlab.core.errors import run_main
from embedlab.core.files import write_tree
from embedlab.core.layout import Layout
from embedlab.core.params import load_params
from embedlab.data.prepared import Prepared
from embedlab.embed.embeddings import load_sets


def main() -> None:
    params = load_params()
    paths = Layout()
    prepared = Prepared.open(paths.prepared)
    for name, emb in load_sets(params.model_names, None, paths).items():
        files = projector_run(emb, prepared, name, params.projector)
        write_tree(paths.projector(name), files)
        points = len(files["metadata.tsv"].splitlines()) - 1  # less the header
        print(f"projector: {name}: {points} points -> {paths.projector(name)}/")
    print(f"open with: tensorboard --logdir {paths.projector()}")


if __name__ == "__main__":
    run_main(main)
