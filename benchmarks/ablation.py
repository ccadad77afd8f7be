"""What each recipe choice buys: smallnet retrained with one param changed at a time, scored on the full test set.

    python benchmarks/ablation.py --run ../cifar-run
    python benchmarks/ablation.py --run ../cifar-airbench-run --variants airbench --per-class 4500 --epochs 10 ...
    python benchmarks/ablation.py --run ../cifar-run --only "recipe (baseline)" --seeds 0 1 2   # run-to-run spread

``--variants recipe`` (the default) changes one choice of the plain recipe; ``--variants airbench`` removes one of
airbench's choices at a time from a run whose params use them all (results/cifar10-airbench/params.yaml).

``--seeds`` trains every variant once per ``train.seed`` (each seed draws other initial weights, epoch orders,
augmentations and dropout) and reports each row's mean and standard deviation: the spread a difference between
rows must exceed to mean anything.

A reduced budget (``--per-class`` training images per class, ``--epochs``) keeps each point to a few minutes on
2 cores; every row is trained and scored exactly like ``benchmarks/learning_curve.py`` (all 10,000 test queries
against the 50,000-image gallery, flip-averaged), and the baseline is rerun in the same invocation so every row
shares the machine's state. Rows are written as they finish, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from learning_curve import train_and_score

from embedlab.core.runtime import cpu_description

RESULTS = Path(__file__).parent / "results"  # every benchmark writes its results file here, beside the scripts

# (name, model overrides, train overrides, augment overrides): each differs from the recipe in one choice.
VARIANTS: list[tuple[str, dict, dict, dict]] = [
    ("recipe (baseline)", {}, {}, {}),
    ("no flip augmentation", {}, {}, {"flip": "none"}),
    ("no translation (shift 0)", {}, {}, {"shift": 0.0}),
    ("no label smoothing", {}, {"label_smoothing": 0.0}, {}),
    ("no weight decay", {}, {"weight_decay": 0.0}, {}),
    ("cosine instead of triangular lr", {}, {"lr_schedule": "cosine"}, {}),
    ("half the peak lr (0.4)", {}, {"lr": 0.4}, {}),
    ("1.5x the peak lr (1.2)", {}, {"lr": 1.2}, {}),
    ("logit scale 4", {"logit_scale": 4.0}, {}, {}),
    ("logit scale 16", {"logit_scale": 16.0}, {}, {}),
    ("patch-whitening stem", {"whiten_stem": True}, {}, {}),
    ("identity-initialised blocks", {"identity_init": True}, {}, {}),
    ("batch 256", {}, {"batch_size": 256}, {}),
    ("batch 1024", {}, {"batch_size": 1024}, {}),
    # retrieval-aware heads and losses: does the embedding rank as well as the classifier classifies?
    ("cosine head, scale 16", {"head": "cosine", "logit_scale": 16.0}, {}, {}),
    ("cosine head, scale 32", {"head": "cosine", "logit_scale": 32.0}, {}, {}),
    ("softmax + triplet loss", {}, {"loss": "softmax+triplet"}, {}),
    ("cosine head 16, no label smoothing", {"head": "cosine", "logit_scale": 16.0}, {"label_smoothing": 0.0}, {}),
    (
        "cosine head 16, no smoothing, lr 0.2",
        {"head": "cosine", "logit_scale": 16.0},
        {"label_smoothing": 0.0, "lr": 0.2},
        {},
    ),
]
# Each removes one of airbench's choices from a recipe that has them all.
AIRBENCH_VARIANTS: list[tuple[str, dict, dict, dict]] = [
    ("airbench recipe (baseline)", {}, {}, {}),
    ("random flip instead of alternating", {}, {}, {"alternate_flip": False}),
    ("sub-pixel (bilinear) shifts instead of whole pixels", {}, {}, {"shift_interpolation": "bilinear"}),
    ("no lookahead", {}, {"lookahead": False}, {}),
    ("BatchNorm shifts at 1x the lr", {}, {"bn_bias_lr_scale": 1.0}, {}),
    ("BatchNorm with a learned scale, shifts at 1x", {"bn_scale": True}, {"bn_bias_lr_scale": 1.0}, {}),
    ("momentum 0.9 instead of 0.85", {}, {"momentum": 0.9}, {}),
    # towards the reference (benchmarks/airbench_reference.py): one difference closed at a time
    (
        "airbench's head: no projection, the classifier on the features x 1/9",
        {"embedding_dim": None, "logit_scale": 1 / 9},
        {},
        {},
    ),
    # retrieval-aware: airbench's head plus a supervised contrastive term on the features it reads
    (
        "airbench's head + supervised contrastive (temperature 0.1, weight 1)",
        {"embedding_dim": None, "logit_scale": 1 / 9},
        {"loss": "softmax+supcon"},
        {},
    ),
    (
        "airbench's head + supervised contrastive (temperature 0.1, weight 0.3)",
        {"embedding_dim": None, "logit_scale": 1 / 9},
        {"loss": "softmax+supcon", "supcon_weight": 0.3},
        {},
    ),
]


def print_spread(rows: list[dict], cpu: dict) -> None:
    """Each variant's mean ± sample standard deviation over its seeds."""
    import numpy as np

    print(f"\nCPU: {cpu['cpu']}, {cpu['cores']} cores, flags: {' '.join(cpu['flags'])}")
    print("| variant | seeds | mAP@5 | softmax test acc | flip-averaged acc | train s |")
    print("|---|---|---|---|---|---|")
    for name in dict.fromkeys(row["variant"] for row in rows):
        mine = [row for row in rows if row["variant"] == name]

        def spread(key: str, mine: list[dict] = mine) -> str:
            values = np.array([row[key] for row in mine if row.get(key) is not None], dtype=float)
            return f"{values.mean():.4f} ± {values.std(ddof=1):.4f}" if len(values) > 1 else f"{values.mean():.4f}"

        seeds = ", ".join(str(row["train"].get("seed")) for row in mine)
        train_s = np.mean([row["train_seconds"] for row in mine])
        print(f"| {name} | {seeds} | {spread('map@5')} | {spread('test_accuracy')} | "
              f"{spread('test_flip_averaged_accuracy')} | {train_s:.0f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a CIFAR-10 clone where `dvc repro` finished")
    parser.add_argument("--backbone", default="smallnet")
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/ablation[_airbench]_cifar10.json")
    parser.add_argument("--only", nargs="+", help="variant names to run (default: all)")
    parser.add_argument("--variants", choices=("recipe", "airbench"), default="recipe")
    parser.add_argument("--seeds", type=int, nargs="+", help="train.seed values: each variant once per seed")
    args = parser.parse_args()
    suffix = ("" if args.variants == "recipe" else f"_{args.variants}") + ("_seeds" if args.seeds else "")
    args.out = args.out or RESULTS / f"ablation{suffix}_cifar10.json"

    cpu = cpu_description()
    report = {"cpu": cpu, "backbone": args.backbone, "per_class": args.per_class, "epochs": args.epochs, "rows": []}
    for name, model, train, augment in VARIANTS if args.variants == "recipe" else AIRBENCH_VARIANTS:
        if args.only and name not in args.only:
            continue
        for seed in args.seeds or [None]:
            seeded = train if seed is None else {**train, "seed": seed}
            row = train_and_score(args.run, args.backbone, args.per_class, args.epochs, None, seeded, augment, model)
            report["rows"].append({"variant": name, "model": model, "train": seeded, "augment": augment, **row})
            args.out.write_text(json.dumps(report, indent=2) + "\n")
            print(json.dumps(report["rows"][-1]), flush=True)
    if args.seeds:
        print_spread(report["rows"], cpu)
        return
    base = report["rows"][0]
    print(f"\nCPU: {cpu['cpu']}, {cpu['cores']} cores, flags: {' '.join(cpu['flags'])}")
    print("| variant | train s | mAP@5 | Δ mAP@5 | softmax test acc | Δ acc |")
    print("|---|---|---|---|---|---|")
    for r in report["rows"]:
        print(
            f"| {r['variant']} | {r['train_seconds']} | {r['map@5']:.4f} | {r['map@5'] - base['map@5']:+.4f} | "
            f"{r['test_accuracy']:.4f} | {r['test_accuracy'] - base['test_accuracy']:+.4f} |"
        )


if __name__ == "__main__":
    main()
