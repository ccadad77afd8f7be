"""Images/s of the embed stage's batched tf.data path vs a per-image ``model.predict`` loop (as in the seeds) and
plain batched ``model.predict``, on the same model and images, in one run.

    python benchmarks/embed_throughput.py                      # a trained model from the pipeline, if present
    python benchmarks/embed_throughput.py --backbone resnet50 --images 4096 --size 32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from embedlab.core.runtime import cpu_description
from embedlab.embed.embeddings import embed_images
from embedlab.models.backbones import build_models
from embedlab.models.io import load_embedding_model

RESULTS = Path(__file__).parent / "results"  # every benchmark writes its results file here, beside the scripts


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--per-image", type=int, default=100, help="images timed in the per-image loop")
    parser.add_argument("--out", type=Path, default=RESULTS / "embed_throughput.json")
    args = parser.parse_args()

    saved = Path("models") / f"{args.backbone}.keras"
    model = (
        load_embedding_model(saved) if saved.exists() else build_models(args.backbone, args.size, 10, seed=0).embedding
    )
    size = model.inputs[0].shape[1]
    images = np.random.default_rng(0).integers(0, 256, size=(args.images, size, size, 3), dtype=np.uint8)

    embed_images(model, images[: args.batch_size], batch_size=args.batch_size, progress=False)  # warm-up / trace
    model.predict(images[: args.batch_size], batch_size=args.batch_size, verbose=0)
    model.predict(images[:1], verbose=0)

    start = time.perf_counter()
    for i in range(args.per_image):
        model.predict(images[i : i + 1], verbose=0)
    per_image = rate(args.per_image, time.perf_counter() - start)

    start = time.perf_counter()
    model.predict(images, batch_size=args.batch_size, verbose=0)
    batched_predict = rate(len(images), time.perf_counter() - start)

    start = time.perf_counter()
    embed_images(model, images, batch_size=args.batch_size, progress=False)
    ours = rate(len(images), time.perf_counter() - start)

    cpu = cpu_description()
    print(
        f"CPU: {cpu['cpu']}, {cpu['cores']} cores, flags: {' '.join(cpu['flags'])}; model: {model.name} "
        f"({'trained' if saved.exists() else 'random init'}), {size}px, {len(images)} images, batch {args.batch_size}"
    )
    print(f"{'method':<34}{'images/s':>10}{'vs per-image':>14}{'vs predict':>12}")
    for label, value in (
        ("per-image model.predict loop", per_image),
        ("batched model.predict", batched_predict),
        ("embedlab embed (tf.data, prefetch)", ours),
    ):
        print(f"{label:<34}{value:>10.1f}{value / per_image:>13.1f}x{value / batched_predict:>11.2f}x")
    rows = {"per_image_predict": per_image, "batched_predict": batched_predict, "embedlab_embed": ours}
    per_second = {k: round(v, 1) for k, v in rows.items()}
    report = {"cpu": cpu, "model": model.name, "trained": saved.exists(), "size": size, "images": len(images),
              "batch_size": args.batch_size, "images_per_second": per_second}  # fmt: skip
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
