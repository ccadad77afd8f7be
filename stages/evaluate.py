"""evaluate: KNN retrieval metrics per model (+ raw-pixel baseline), plot data and example collages."""

from embedlab.data.prepare import Prepared
from embedlab.embeddings import load_sets
from embedlab.errors import run_main
from embedlab.evaluation import confusion_rows, draw_examples, evaluate_model, map_at_k_rows, per_class_rows
from embedlab.fsutil import save_figure, write_json
from embedlab.params import load_params


def main() -> None:
    params = load_params()
    prepared = Prepared.open("data/prepared")
    curve_rows, class_rows = [], []
    k = params.evaluate.k
    for name, emb in load_sets(params.model_names, prepared).items():
        metrics, report = evaluate_model(emb, params.evaluate)
        write_json(f"metrics/retrieval/{name}.json", metrics)
        write_json(f"plots/retrieval/confusion/{name}.json", confusion_rows(emb, report))
        save_figure(
            draw_examples(prepared, emb, report, params.evaluate, name),
            f"plots/retrieval/examples/{name}_examples.png",
            dpi=90,
        )
        curve_rows += map_at_k_rows(name, report)
        class_rows += per_class_rows(name, report)
        print(f"evaluate: {name:<14} mAP@{k} {metrics[f'map@{k}']:.4f}  P@1 {metrics['precision@1']:.4f}")
    write_json("plots/retrieval/map_at_k.json", curve_rows)
    write_json("plots/retrieval/per_class_ap.json", class_rows)


if __name__ == "__main__":
    run_main(main)
