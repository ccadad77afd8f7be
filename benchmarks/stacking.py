"""Every stacking method against the best single backbone, on a finished run's embeddings.

    python benchmarks/stacking.py                 # the pipeline in this directory
    python benchmarks/stacking.py --run ../cifar-run

Each method is fitted on the validation split (as the stack stage does) and scored like the evaluate stage: test
queries against the gallery of ``evaluate.gallery``, exact search. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"  # every benchmark writes its results file here, beside the scripts

METHODS = ("select", "concat", "pca", "weighted", "mlp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=".", help="repository clone with data/embeddings and params.yaml")
    parser.add_argument("--out", type=Path, default=RESULTS / "stacking_cifar10.json")
    args = parser.parse_args()

    from embedlab.core.layout import Layout
    from embedlab.core.params import load_params
    from embedlab.core.runtime import cpu_description
    from embedlab.embed.embeddings import load_sets
    from embedlab.retrieval.evaluation import evaluate_model
    from embedlab.stack.fit import stack_embeddings

    run = Path(args.run)
    params = load_params(run / "params.yaml")
    evaluate = params.evaluate.model_copy(update={"index": "exact"})  # never an approximate index here
    sets = load_sets(params.stacked_backbones, None, Layout(run))
    rows = []
    for name, emb in sets.items():
        metrics, _ = evaluate_model(emb, evaluate)
        rows.append({"model": name, "map@5": metrics["map@5"], "precision@1": metrics["precision@1"]})
    best = max(rows, key=lambda row: row["map@5"])
    for method in METHODS:
        started = time.perf_counter()
        stack_params = params.stack.model_copy(update={"method": method})
        stacked, _, fit = stack_embeddings(sets, stack_params)
        seconds = time.perf_counter() - started
        metrics, _ = evaluate_model(stacked, evaluate)
        weights = {k.removeprefix("weight_"): v for k, v in fit.items() if k.startswith("weight_")}
        rows.append(
            {
                "model": f"stack: {method}",
                "map@5": metrics["map@5"],
                "precision@1": metrics["precision@1"],
                "vs_best_single": round(metrics["map@5"] - best["map@5"], 6),
                "fit_seconds": round(seconds, 1),
                "weights": weights,
            }
        )
    print(f"CPU: {cpu_description()}")
    print(f"best single backbone: {best['model']} (mAP@5 {best['map@5']:.4f})\n")
    print("| model | mAP@5 | P@1 | vs best single | fit s | weights |\n|---|---|---|---|---|---|")
    for row in rows:
        weights = ", ".join(f"{k} {v:.2f}" for k, v in row.get("weights", {}).items())
        delta = f"{row['vs_best_single']:+.4f}" if "vs_best_single" in row else ""
        print(
            f"| {row['model']} | {row['map@5']:.4f} | {row['precision@1']:.4f} | {delta} | "
            f"{row.get('fit_seconds', '')} | {weights} |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"cpu": cpu_description(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
