"""evaluate: KNN retrieval metrics per model (+ raw-pixel baseline), plot data and example collages.

metrics/retrieval/<model>.json holds the headline (mAP@k, MAP@R, P@1; the stack's gain over its best backbone), the
model's health (ok, collapsed, below raw pixels) and the protocol the figures were measured with;
reports/retrieval/<model>.json every metric."""

from embedlab.core.errors import run_main
from embedlab.core.files import save_figure, write_json
from embedlab.core.layout import RAW_PIXELS, STACK, Layout
from embedlab.core.params import load_params
from embedlab.data.prepared import Prepared
from embedlab.embed.embeddings import load_sets
from embedlab.retrieval.evaluation import (
    check_health,
    confusion_rows,
    draw_examples,
    evaluate_model,
    map_at_k_rows,
    per_class_rows,
    protocol,
    protocol_line,
    stack_gain,
)

# What `dvc metrics show` lists per model, beside mAP@evaluate.k, health and protocol; every other metric goes to
# reports/retrieval/<model>.json.
HEADLINE = ("map@r", "precision@1")


def main() -> None:
    params = load_params()
    paths = Layout()
    prepared = Prepared.open(paths.prepared)
    curve_rows, class_rows, scores = [], [], {}
    k = params.evaluate.k
    for name, emb in load_sets(params.model_names, prepared, paths).items():
        metrics, report = evaluate_model(emb, params.evaluate)
        if name == STACK:
            metrics[f"map@{k}_gain"] = stack_gain(metrics, [scores[b] for b in params.stacked_backbones], k)
        scores[name] = metrics
        write_json(paths.plot("retrieval", "confusion", f"{name}.json"), confusion_rows(emb, report))
        save_figure(
            draw_examples(prepared, emb, report, params.evaluate, name),
            paths.plot("retrieval", "examples", f"{name}_examples.png"),
            dpi=90,
        )
        curve_rows += map_at_k_rows(name, report)
        class_rows += per_class_rows(name, report)
        print(f"evaluate: {name:<14} mAP@{k} {metrics[f'map@{k}']:.4f}  P@1 {metrics['precision@1']:.4f}")
    for name, metrics in scores.items():  # raw pixels, scored last, is what every model's health is judged against
        verdict = check_health(name, metrics, None if name == RAW_PIXELS else scores[RAW_PIXELS], k)
        headline = {key: metrics[key] for key in (f"map@{k}", *HEADLINE, f"map@{k}_gain") if key in metrics}
        measured = protocol(metrics, params.evaluate)
        headline |= {"health": verdict, "protocol": protocol_line(measured)}
        write_json(paths.metrics("retrieval", name), headline)
        write_json(paths.report("retrieval", name), {**metrics, "health": verdict, **measured})
    write_json(paths.plot("retrieval", "map_at_k.json"), curve_rows)
    write_json(paths.plot("retrieval", "per_class_ap.json"), class_rows)


if __name__ == "__main__":
    run_main(main)
