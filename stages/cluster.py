"""cluster: K-Means metrics and t-SNE/PCA maps of every model's test-split embeddings (+ raw-pixel baseline)."""

from embedlab.clustering import run_clustering
from embedlab.data.prepare import Prepared
from embedlab.embeddings import load_sets
from embedlab.errors import run_main
from embedlab.params import load_params


def main() -> None:
    params = load_params()
    sets = load_sets(params.model_names, Prepared.open("data/prepared"))
    for name, metrics in run_clustering(sets, params.cluster).items():
        print(f"cluster: {name:<14} NMI {metrics['nmi']:.4f}  ARI {metrics['ari']:.4f}  purity {metrics['purity']:.4f}")


if __name__ == "__main__":
    run_main(main)
