"""embed@<backbone>: L2-normalised embeddings of every prepared image -> data/embeddings/<bb>.npz."""

import sys

from embedlab.core.errors import run_main
from embedlab.core.layout import Layout
from embedlab.core.params import load_params
from embedlab.data.prepared import Prepared
from embedlab.embed.embeddings import EmbeddingSet, embed_images, embedding_views
from embedlab.models.io import load_embedding_model


def main() -> None:
    name = sys.argv[1]
    params = load_params()  # validate before work
    paths = Layout()
    data = Prepared.open(paths.prepared)
    model = load_embedding_model(paths.model(name))
    vectors = embed_images(model, data.images, batch_size=params.embed.batch_size, views=embedding_views(params.embed))
    index = data.index
    EmbeddingSet(vectors, index["id"].to_numpy(), data.labels, index["split"].to_numpy(), data.class_names).save(
        paths.embeddings(name)
    )
    print(f"embed@{name}: {vectors.shape} -> {paths.embeddings(name)}")


if __name__ == "__main__":
    run_main(main)
