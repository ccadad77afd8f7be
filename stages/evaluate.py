"""evaluate: KNN retrieval metrics per model (+ raw-pixel baseline), plot data and example collages.

metrics/retrieval/<model>.json holds the headline (mAP@k, MAP@R, P@1; the stack's gain over its best backbone);
reports/retrieval/<model>.json every metric with the query and gallery counts."""

from embedlab.core.errors import run_main
from embedlab.core.files import save_figure, write_json
from embedlab.core.layout import STACK, Layout
from embedlab.core.params import load_params
from embedlab.data.prepared import Prepared
from embedlab.embed.embeddings import load_sets
from embedlab.retrieval.evaluation import (
    confusion_rows,
    draw_examples,
    evaluate_model,
    map_at_k_rows,
    per_class_rows,
    stack_gain,
)

# What `dvc metrics show` lists per model, beside mAP@evaluate.k; every other metric and the query and gallery counts
# go to reports/retrieval/<model>.json.
HEADLINE = ("map@r", "precision@1")


def main() -> None:
    params = load_params()
    paths = Layout()
    prepared = Prepared.open(paths.prepared)
    curve_rows, class_rows, scores = [], [], {}
    k = params.evaluate.k
    for name, emb in load_sets(params.model_names, prepared, paths).items():
        metrics, report = evaluate_model(emb, params.evaluate)
        scores[name] = metrics
        extra = (
            {f"map@{k}_gain": stack_gain(metrics, [scores[b] for b in params.stacked_backbones], k)}
            if name == STACK
            else {}
        )
        headline = {key: metrics[key] for key in (f"map@{k}", *HEADLINE)}
        write_json(paths.metrics("retrieval", name), {**headline, **extra})
        write_json(paths.report("retrieval", name), {**metrics, **extra})
        write_json(paths.plot("retrieval", "confusion", f"{name}.json"), confusion_rows(emb, report))
        save_figure(
            draw_examples(prepared, emb, report, params.evaluate, name),
            paths.plot("retrieval", "examples", f"{name}_examples.png"),
            dpi=90,
        )
        curve_rows += map_at_k_rows(name, report)
        class_rows += per_class_rows(name, report)
        print(f"evaluate: {name:<14} mAP@{k} {metrics[f'map@{k}']:.4f}  P@1 {metrics['precision@1']:.4f}")
    write_json(paths.plot("retrieval", "map_at_k.json"), curve_rows)
    write_json(paths.plot("retrieval", "per_class_ap.json"), class_rows)


if __name__ == "__main__":
    run_main(main)
