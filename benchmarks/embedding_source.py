"""One trained smallnet, its embedding read from different points of the head, and its accuracy with airbench's
test-time augmentation: does retrieval from the classifier's logits close the gap between mAP@5 and softmax
accuracy, without retraining?

    python benchmarks/embedding_source.py --run <clone where dvc repro trained smallnet>

Reads the clone's ``models/smallnet.weights.h5`` and ``data/embeddings/smallnet.npz`` (the embed stage's
flip-averaged features), scores every variant like the evaluate stage (exact search, the clone's ``evaluate.*``) and
writes ``benchmarks/results/embedding_source.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"  # every benchmark writes its results file here, beside the scripts


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=RESULTS / "embedding_source.json")
    args = parser.parse_args()

    import keras

    from embedlab.augment.test_time import TestTimeViews
    from embedlab.core.params import load_params
    from embedlab.core.runtime import cpu_description
    from embedlab.data.prepared import Prepared
    from embedlab.embed.embeddings import EmbeddingSet, embed_images
    from embedlab.models.backbones import build_models
    from embedlab.retrieval.evaluation import evaluate_model

    params = load_params(args.run / "params.yaml")
    model_params, train_params = params.for_backbone("smallnet")
    data = Prepared.open(args.run / "data" / "prepared")
    models = build_models(
        "smallnet", data.image_size, len(data.class_names), model_params, seed=train_params.seed, dropout=0.0
    )
    models.trainer.load_weights(args.run / "models" / "smallnet.weights.h5")
    to_logits = keras.Model(models.trainer.input, models.trainer.output["logits"])

    def logits(images: np.ndarray) -> np.ndarray:
        """The image's logits plus its mirror's (flip TTA, unnormalised)."""
        mirrored = np.ascontiguousarray(images[:, :, ::-1])
        return sum(
            embed_images(to_logits, np.ascontiguousarray(x), batch_size=512, progress=False) for x in (images, mirrored)
        )

    images = np.asarray(data.images[np.arange(len(data.labels))])
    split, labels = data.index["split"].to_numpy(), data.labels
    test = split == "test"
    plain = embed_images(to_logits, images[test], batch_size=512, progress=False)
    flipped = logits(images)
    # airbench's level 2 (flips and 1 px shifts), the views the train stage scores and the embed stage can average
    views = TestTimeViews.of(flip=True, translate=True)
    level2 = views.average(
        [embed_images(to_logits, v(images[test]), batch_size=512, progress=False) for v in views.views]
    )
    accuracy = {
        name: round(float(np.mean(np.argmax(scores, axis=1) == labels[test])), 4)
        for name, scores in (("softmax", plain), ("flip", flipped[test]), ("flip_translate", level2))
    }
    features = EmbeddingSet.load(args.run / "data" / "embeddings" / "smallnet.npz").embeddings
    probabilities = np.exp(flipped / 2 - np.max(flipped / 2, axis=1, keepdims=True))
    variants = {
        "features (the embed stage's embedding)": features,
        "logits, flip-averaged": unit(flipped),
        "softmax probabilities": unit(probabilities),
        **{f"features + {a} x unit logits": unit(np.hstack([features, a * unit(flipped)])) for a in (0.5, 1.0, 2.0)},
    }
    rows = []
    for name, vectors in variants.items():
        embeddings = EmbeddingSet(vectors.astype("float32"), data.index["id"].to_numpy(), labels, split,
                                  data.class_names)  # fmt: skip
        metrics, _ = evaluate_model(embeddings, params.evaluate.model_copy(update={"index": "exact"}))
        rows.append({"variant": name, **{k: metrics[k] for k in ("map@5", "precision@1", "map@r")}})
        print(json.dumps(rows[-1]), flush=True)
    result = {"cpu": cpu_description(), "run": str(args.run), "accuracy": accuracy, "rows": rows}
    print(json.dumps(accuracy))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
