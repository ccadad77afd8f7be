"""Backbone input size against cost: an ImageNet backbone trained on 32 px CIFAR-10 images at several input sizes.

    python benchmarks/input_size.py --run ../cifar-run --backbone resnet50 --sizes 32 64

Keras' ResNet50 and VGG16 downsample 32 px to 1x1 by their last block; resizing inside the model (model.input_size)
keeps more resolution for about (size/32)^2 the compute. Each size trains the run's recipe for that backbone on
the same seeded subset and epochs, and is scored like the evaluate stage (all test queries, the whole gallery).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from learning_curve import train_and_score

RESULTS = Path(__file__).parent / "results"  # every benchmark writes its results file here, beside the scripts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("."), help="a clone where `dvc repro` finished")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=RESULTS / "input_size_cifar10.json")
    args = parser.parse_args()

    from embedlab.core.runtime import cpu_description

    rows = []
    for size in args.sizes:
        row = {"input_size": size, **train_and_score(args.run, args.backbone, args.per_class, args.epochs, size)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\nCPU: {cpu_description()}")
    print("| input size | train images | epochs | train s | mAP@5 | P@1 | softmax test acc |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['input_size']} px | {row['train_images']:,} | {row['epochs']} | {row['train_seconds']:.0f} "
            f"| {row['map@5']:.4f} | {row['precision@1']:.4f} | {row['test_accuracy']:.4f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"backbone": args.backbone, "cpu": cpu_description(), "rows": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
