"""What test-time flip averaging (``embed.flip_average``) buys, per backbone, on a finished run's models.

    python benchmarks/flip_average.py --run ../cifar-run
    python benchmarks/flip_average.py --run ../cifar-run --backbones smallnet --translate --out ...

Embeds every prepared image and its left-right mirror once per backbone, then scores the plain embeddings and the
averaged ones exactly as the evaluate stage does (test queries against the ``evaluate.gallery`` gallery, exact).
With ``--translate`` it also scores airbench's richer test-time augmentation: each of the two views and its
1 px diagonal shifts both ways (reflect-padded), weighted 1/4 for each unshifted view and 1/8 for each shifted one,
which costs 6 passes instead of 2. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"  # every benchmark writes its results file here, beside the scripts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("."), help="a clone where `dvc repro` finished")
    parser.add_argument("--backbones", nargs="+", help="default: every backbone of the run's params.yaml")
    parser.add_argument("--translate", action="store_true", help="also score flips + 1 px translations")
    parser.add_argument("--out", type=Path, default=RESULTS / "flip_average_cifar10.json")
    args = parser.parse_args()

    from embedlab.augment.test_time import TestTimeViews
    from embedlab.core.params import load_params
    from embedlab.core.runtime import cpu_description
    from embedlab.data.prepared import Prepared
    from embedlab.embed.embeddings import EmbeddingSet, embed_images, l2_normalize
    from embedlab.models.io import load_embedding_model
    from embedlab.retrieval.evaluation import evaluate_model

    params = load_params(args.run / "params.yaml")
    evaluate = params.evaluate.model_copy(update={"index": "exact"})
    data = Prepared.open(args.run / "data" / "prepared")
    ids, splits = data.index["id"].to_numpy(), data.index["split"].to_numpy()
    views = TestTimeViews.of(flip=True, translate=args.translate)  # the embed stage's views, one pass each
    images = np.asarray(data.images)
    rows = []
    for name in args.backbones or list(params.backbones):
        model = load_embedding_model(args.run / "models" / f"{name}.keras")
        started = time.perf_counter()
        outputs = [embed_images(model, images, batch_size=params.embed.batch_size, progress=False)]
        seconds = time.perf_counter() - started
        outputs += [
            embed_images(model, view(images), batch_size=params.embed.batch_size, progress=False)
            for view in views.views[1:]
        ]
        row = {"model": name, "embed_seconds_per_pass": round(seconds, 1)}
        variants = [("plain", outputs[0]), ("flip_average", l2_normalize(outputs[0] + outputs[1]))]
        if args.translate:
            variants.append(("flip_translate", l2_normalize(views.average(outputs))))
        for label, vectors in variants:
            metrics, _ = evaluate_model(EmbeddingSet(vectors, ids, data.labels, splits, data.class_names), evaluate)
            row[label] = {key: metrics[key] for key in ("map@5", "precision@1", "map@r", "knn_accuracy@5")}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\nCPU: {cpu_description()}")
    print("| model | mAP@5 plain | mAP@5 flip-averaged | gain | P@1 plain | P@1 flip-averaged | embed s/pass |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        plain, flip = row["plain"], row["flip_average"]
        print(
            f"| {row['model']} | {plain['map@5']:.4f} | {flip['map@5']:.4f} | {flip['map@5'] - plain['map@5']:+.4f} "
            f"| {plain['precision@1']:.4f} | {flip['precision@1']:.4f} | {row['embed_seconds_per_pass']} |"
        )
    for row in rows:
        if "flip_translate" in row:
            translated = row["flip_translate"]
            print(
                f"{row['model']}, flips + 1 px translations: mAP@5 {translated['map@5']:.4f}, "
                f"P@1 {translated['precision@1']:.4f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": cpu_description(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
