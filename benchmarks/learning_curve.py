"""What more compute buys: full-test-set mAP@5 against training images and against epochs, for one backbone.

    python benchmarks/learning_curve.py --run ../cifar-run

Trains the backbone with the run's own params (``params.yaml`` of ``--run``, its overrides included) on seeded
class-balanced subsets (``train.max_per_class``) and for fewer epochs, embeds every image and scores it exactly as
the evaluate stage does (all test queries against the whole gallery). The run's own result (all training images,
all epochs) is read from its metrics and added as the last point of both curves. Writes ``<out>.json`` and
``<out>.png``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"  # every benchmark writes its results file here, beside the scripts


def train_and_score(
    run: Path,
    backbone: str,
    max_per_class: int | None,
    epochs: int,
    input_size: int | None = None,
    train_overrides: dict | None = None,
    augment_overrides: dict | None = None,
    model_overrides: dict | None = None,
) -> dict:
    """Train ``backbone`` with the run's params (and these overrides), then score it like the evaluate stage."""
    import keras

    from embedlab.core.params import load_params
    from embedlab.data.prepared import Prepared
    from embedlab.embed.embeddings import EmbeddingSet, embed_images, embedding_views
    from embedlab.retrieval.evaluation import evaluate_model
    from embedlab.train.loop import Trainer

    params = load_params(run / "params.yaml")
    model_params, train_params = params.for_backbone(backbone)
    model_params = model_params.model_validate(
        {**model_params.model_dump(), **(model_overrides or {}), **({"input_size": input_size} if input_size else {})}
    )
    train_params = train_params.model_validate(
        {
            **train_params.model_dump(),
            **(train_overrides or {}),
            "max_per_class": max_per_class,
            "epochs": epochs,
            "checkpoint_interval": 1e9,
        }
    )
    augment = params.augment.model_validate({**params.augment.model_dump(), **(augment_overrides or {})})
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = Trainer(
            backbone, model_params, train_params, augment, prepared_dir=run / "data" / "prepared",
            work_dir=Path(tmp) / "work", live_dir=Path(tmp) / "live",
        ).run()  # fmt: skip
        seconds = time.perf_counter() - started
        data = Prepared.open(run / "data" / "prepared")
        views = embedding_views(params.embed)
        vectors = embed_images(
            result.embedding, data.images, batch_size=params.embed.batch_size, progress=False, views=views
        )
        keras.backend.clear_session()  # the next point builds its models from a clean slate
    emb = EmbeddingSet(vectors, data.index["id"].to_numpy(), data.labels, data.index["split"].to_numpy(),
                       data.class_names)  # fmt: skip
    metrics, _ = evaluate_model(emb, params.evaluate.model_copy(update={"index": "exact"}))
    return {
        "train_images": result.metrics["train_images"],
        "epochs": epochs,
        "train_seconds": round(seconds, 1),
        "fit_seconds": result.metrics["seconds_fit"],  # the optimisation alone: what the reference's time measures
        "cpu_cores_used": result.metrics["cpu_cores_used"],  # < cores: the steps did not get the whole machine
        "map@5": metrics["map@5"],
        "precision@1": metrics["precision@1"],
        "test_accuracy": result.metrics["test_accuracy"],
        "test_flip_averaged_accuracy": result.metrics.get("test_flip_averaged_accuracy"),
        "test_flip_translate_averaged_accuracy": result.metrics.get("test_flip_translate_averaged_accuracy"),
    }


def draw(rows: list[dict], backbone: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full_epochs = max(row["epochs"] for row in rows)
    by_size = sorted((r for r in rows if r["epochs"] == full_epochs), key=lambda r: r["train_images"])
    epoch_sizes = {r["train_images"] for r in rows if r["kind"] == "epochs"}
    by_epochs = sorted((r for r in rows if r["train_images"] in epoch_sizes), key=lambda r: r["epochs"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].plot([r["train_images"] for r in by_size], [r["map@5"] for r in by_size], "-o")
    axes[0].set_xscale("log")
    axes[0].set_xlabel(f"training images ({full_epochs} epochs)")
    for size in sorted(epoch_sizes):
        line = [r for r in by_epochs if r["train_images"] == size]
        axes[1].plot([r["epochs"] for r in line], [r["map@5"] for r in line], "-o", label=f"{size:,} images")
    axes[1].set_xlabel("epochs (lr schedule spans the run)")
    axes[1].legend()
    for ax in axes:
        ax.set_ylabel("mAP@5, full test set")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{backbone}: learning curve")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("."), help="a clone where `dvc repro` finished")
    parser.add_argument("--backbone", default="smallnet")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000], help="images per class")
    parser.add_argument("--epochs", type=int, nargs="+", default=[2, 4, 8], help="shorter runs, at --epochs-size")
    parser.add_argument("--epochs-size", type=int, default=1000, help="images per class of the epoch curve")
    parser.add_argument("--out", type=Path, default=RESULTS / "learning_curve_cifar10")
    args = parser.parse_args()

    from embedlab.cli.results import read_report
    from embedlab.core.runtime import cpu_description

    run_train = read_report(args.run, "train", args.backbone)
    run_retrieval = read_report(args.run, "retrieval", args.backbone)
    full_epochs = run_train["epochs_run"]
    rows = [
        {
            "kind": "run",
            "train_images": run_train["train_images"],
            "epochs": full_epochs,
            "train_seconds": run_train["wall_seconds"],
            "map@5": run_retrieval["map@5"],
            "precision@1": run_retrieval["precision@1"],
            "test_accuracy": run_train["test_accuracy"],
        }
    ]
    plan = [("size", size, full_epochs) for size in args.sizes]
    plan += [("epochs", args.epochs_size, epochs) for epochs in args.epochs if epochs != full_epochs]
    for kind, size, epochs in plan:
        row = {"kind": kind, **train_and_score(args.run, args.backbone, size, epochs)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"backbone": args.backbone, "cpu": cpu_description(), "rows": rows}, indent=2) + "\n"
    )
    draw(rows, args.backbone, args.out.with_suffix(".png"))
    print("| training images | epochs | train s | mAP@5 | P@1 | softmax test acc |\n|---|---|---|---|---|---|")
    for row in sorted(rows, key=lambda r: (r["train_images"], r["epochs"])):
        print(
            f"| {row['train_images']:,} | {row['epochs']} | {row['train_seconds']:.0f} | {row['map@5']:.4f} | "
            f"{row['precision@1']:.4f} | {row['test_accuracy']:.4f} |"
        )


if __name__ == "__main__":
    main()
