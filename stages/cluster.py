"""cluster: K-Means metrics and t-SNE/PCA maps of every model's test-split embeddings (+ raw-pixel baseline)."""

from embedlab.cluster.clustering import cluster_model, draw_model_map, scatter_rows
from embedlab.core.errors import run_main
from embedlab.core.files import save_figure, write_json
from embedlab.core.layout import Layout
from embedlab.core.params import load_params
from embedlab.data.prepared import Prepared
from embedlab.embed.embeddings import load_sets

# What `dvc metrics show` lists per model; ARI, purity and the silhouette go to reports/cluster/<model>.json.
HEADLINE = ("nmi",)


def main() -> None:
    params = load_params()
    paths = Layout()
    for name, emb in load_sets(params.model_names, Prepared.open(paths.prepared), paths).items():
        result = cluster_model(emb, params.cluster)
        write_json(paths.metrics("cluster", name), {key: result.metrics[key] for key in HEADLINE})
        write_json(paths.report("cluster", name), result.metrics)
        class_names = [str(c) for c in emb.class_names]
        for method in result.maps:
            write_json(paths.plot("cluster", method, f"{name}.json"), scatter_rows(result, method, class_names))
            title = f"{name}: {method} of the test split"
            figure = draw_model_map(result, method, class_names, title)
            save_figure(figure, paths.plot("cluster", f"{name}_{method}.png"), dpi=80)
        m = result.metrics
        print(f"cluster: {name:<14} NMI {m['nmi']:.4f}  ARI {m['ari']:.4f}  purity {m['purity']:.4f}")


if __name__ == "__main__":
    run_main(main)
