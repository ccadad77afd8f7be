"""airbench94's training, reimplemented in Keras outside the pipeline: what the published recipe reaches on *this*
data, so the pipeline's smallnet can be judged against it rather than against a figure measured elsewhere.

    python benchmarks/airbench_reference.py --run ../cifar-run
    python benchmarks/airbench_reference.py --run ../cifar-run --with-val ...   # all 50,000 training images
    python benchmarks/airbench_reference.py --run ../cifar-run --widths 128 384 384 --lr 10 --epochs 15  # airbench95

It follows the paper and its `airbench94.py` (K. Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024):
a frozen patch-whitening 2x2 stem (its bias trained for 3 epochs), three conv-pool-BN-GELU blocks of widths 64, 256,
256 with identity-initialised convolutions and BatchNorm without scale, a 3x3 max pool and a bias-free linear head
scaled by 1/9; Nesterov SGD (momentum 0.85) on the summed label-smoothed (0.2) loss, lr and weight decay in airbench's
decoupled units, BatchNorm shifts at 64x the lr, a triangular schedule (0.2 -> 1 at 23 % -> 0.07); batch 1024 for
9.9 epochs; alternating flip and whole-pixel translation by up to 2 px (reflect-padded); lookahead every 5 steps
from epoch 3; test-time augmentation by flips and 1 px translations. It trains on the run's prepared train split
(or train+val with ``--with-val``, as airbench trains on all 50,000) and scores the 10,000 test images.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"  # every benchmark writes its results file here, beside the scripts

CIFAR_MEAN = np.array((0.4914, 0.4822, 0.4465), np.float32)
CIFAR_STD = np.array((0.2470, 0.2435, 0.2616), np.float32)
BATCH, LR, MOMENTUM, WEIGHT_DECAY, SHIFT_LR_SCALE, LABEL_SMOOTHING = 1024, 11.5, 0.85, 0.0153, 64.0, 0.2
WIDTHS = (64, 256, 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("."), help="a clone whose data/prepared holds CIFAR-10")
    parser.add_argument("--epochs", type=float, default=9.9)
    parser.add_argument("--with-val", action="store_true", help="train on train+val (50,000 images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--widths", type=int, nargs=3, default=WIDTHS, help="airbench95: 128 384 384")
    parser.add_argument("--lr", type=float, default=LR, help="per 1,024 summed examples (airbench95: 10.0)")
    parser.add_argument("--out", type=Path, default=RESULTS / "airbench_reference.json")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from embedlab.core.runtime import cpu_description
    from embedlab.data.prepared import Prepared

    keras.utils.set_random_seed(args.seed)
    data = Prepared.open(args.run / "data" / "prepared")
    splits = data.index["split"].to_numpy()
    train_rows = np.isin(splits, ["train", "val"] if args.with_val else ["train"])
    x_train, y_train = normalise(data.images[train_rows]), data.labels[train_rows].astype("int32")
    x_test, y_test = normalise(data.images[splits == "test"]), data.labels[splits == "test"]
    model, parts = build(len(data.class_names), args.seed, tuple(args.widths))
    whiten(parts["stem"], x_train[:5000])

    # airbench's units: lr per 1024 examples of summed loss, divided by the Nesterov step growth 1 + 1/(1 - m)
    kilostep = 1024 * (1 + 1 / (1 - MOMENTUM))
    lr, decay = args.lr / kilostep, WEIGHT_DECAY * BATCH / kilostep
    shifts, others, stem_bias = parts["shifts"], parts["others"], parts["stem"].bias
    variables = [*shifts, *others, stem_bias]
    velocity = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
    rates = [lr * SHIFT_LR_SCALE] * len(shifts) + [lr] * (len(others) + 1)

    @tf.function
    def step(images, labels, schedule, train_stem_bias: bool):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            targets = tf.one_hot(labels, 10) * (1 - LABEL_SMOOTHING) + LABEL_SMOOTHING / 10
            loss = tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(targets, logits))
        grads = tape.gradient(loss, variables)
        for variable, grad, buffer, rate in zip(variables, grads, velocity, rates, strict=True):
            if variable is stem_bias and not train_stem_bias:
                continue
            grad = grad + (decay / rate) * variable  # PyTorch's coupled weight decay, as airbench sets it
            buffer.assign(MOMENTUM * buffer + grad)
            variable.assign_sub(rate * schedule * (grad + MOMENTUM * buffer))
        return loss / BATCH

    rng = np.random.default_rng(args.seed)
    size = len(x_train)
    steps_per_epoch = size // BATCH
    total = math.ceil(steps_per_epoch * args.epochs)
    schedule = np.interp(np.arange(total + 1), [0, int(0.23 * total), total], [0.2, 1.0, 0.07]).astype("float32")
    flipped = np.where((rng.random(size) < 0.5)[:, None, None, None], x_train[:, :, ::-1], x_train)
    padded = np.pad(flipped, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    averaged, done, seconds, history = None, 0, 0.0, []
    for epoch in range(math.ceil(args.epochs)):
        started = time.perf_counter()
        images = crop(padded, rng.integers(-2, 3, size=(size, 2)))
        if epoch % 2:
            images = images[:, :, ::-1]
        order = rng.permutation(size)
        for i in range(steps_per_epoch):
            rows = order[i * BATCH : (i + 1) * BATCH]
            loss = step(tf.constant(images[rows]), tf.constant(y_train[rows]), tf.constant(schedule[done]), epoch < 3)
            done += 1
            if epoch >= 3 and done % 5 == 0:  # lookahead over every float state, BatchNorm statistics included
                if averaged is None:
                    averaged = [np.array(v) for v in model.weights]
                else:
                    rho = 0.95**5 * (done / total) ** 3
                    for average, variable in zip(averaged, model.weights, strict=True):
                        average += (1 - rho) * (np.asarray(variable) - average)
                        variable.assign(average)
            if done >= total:
                break
        if averaged is not None:
            for average, variable in zip(averaged, model.weights, strict=True):
                variable.assign(average)
        seconds += time.perf_counter() - started
        history.append({"epoch": epoch + 1, "train_loss": round(float(loss), 4), "seconds": round(seconds, 1),
                        "test_accuracy": accuracy(model, x_test, y_test, 0)})  # fmt: skip
        print(json.dumps(history[-1]), flush=True)

    result = {
        "cpu": cpu_description(),
        "seed": args.seed,
        "widths": list(args.widths),
        "lr": args.lr,
        "train_images": size,
        "epochs": args.epochs,
        "train_seconds": round(seconds, 1),
        "images_per_second": round(steps_per_epoch * BATCH * args.epochs / seconds, 1),
        "test_accuracy": accuracy(model, x_test, y_test, 0),
        "test_accuracy_flip": accuracy(model, x_test, y_test, 1),
        "test_accuracy_flip_translate": accuracy(model, x_test, y_test, 2),
        "history": history,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 RGB to airbench's input: per-channel CIFAR-10 mean and standard deviation."""
    return (np.asarray(images, np.float32) / 255.0 - CIFAR_MEAN) / CIFAR_STD


def crop(padded: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Each padded image cut back to 32 px, moved by its whole-pixel (dy, dx) in [-2, 2]."""
    out = np.empty((len(padded), 32, 32, padded.shape[-1]), np.float32)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            rows = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            out[rows] = padded[rows, 2 + dy : 34 + dy, 2 + dx : 34 + dx]
    return out


def build(classes: int, seed: int, widths: tuple[int, int, int] = WIDTHS):
    """The network, and its variables grouped as the optimizer treats them."""
    import keras

    rng = np.random.default_rng(seed)
    inputs = keras.Input((32, 32, 3))
    stem = keras.layers.Conv2D(24, 2, padding="valid", name="stem")
    x = keras.layers.Activation("gelu")(stem(inputs))
    convs, norms, width_in = [], [], 24
    for b, width in enumerate(widths):
        for c in (1, 2):
            conv = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{b}_conv{c}")
            x = conv(x)
            if c == 1:
                x = keras.layers.MaxPooling2D(2)(x)
            norm = keras.layers.BatchNormalization(momentum=0.6, epsilon=1e-12, scale=False, name=f"block{b}_bn{c}")
            x = keras.layers.Activation("gelu")(norm(x))
            convs.append((conv, width_in if c == 1 else width, width))
            norms.append(norm)
        width_in = width
    x = keras.layers.Flatten()(keras.layers.MaxPooling2D(3)(x))
    head = keras.layers.Dense(classes, use_bias=False, name="head")
    model = keras.Model(inputs, head(x) / 9.0)
    for conv, fan_in, width in convs:  # PyTorch's default init, then the identity in the first filters
        bound = 1 / math.sqrt(9 * fan_in)
        kernel = rng.uniform(-bound, bound, (3, 3, fan_in, width)).astype("float32")
        count = min(fan_in, width)
        kernel[:, :, :, :count] = 0
        kernel[1, 1, np.arange(count), np.arange(count)] = 1
        conv.kernel.assign(kernel)
    head.kernel.assign(rng.uniform(-1 / 16, 1 / 16, head.kernel.shape).astype("float32"))
    others = [conv.kernel for conv, _, _ in convs] + [head.kernel]
    return model, {"stem": stem, "shifts": [norm.beta for norm in norms], "others": others}


def whiten(stem, images: np.ndarray, eps: float = 5e-4) -> None:
    """The stem's filters: eigenvectors of the 2x2 patch covariance over sqrt(eigenvalue + eps), both signs."""
    windows = np.lib.stride_tricks.sliding_window_view(images, (2, 2), axis=(1, 2))
    patches = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 12).astype(np.float64)
    values, vectors = np.linalg.eigh(patches.T @ patches / len(patches))
    filters = vectors[:, ::-1] / np.sqrt(values[::-1] + eps)
    stem.kernel.assign(np.concatenate([filters, -filters], axis=1).reshape(2, 2, 3, 24).astype("float32"))
    stem.bias.assign(np.zeros(24, "float32"))


def accuracy(model, images: np.ndarray, labels: np.ndarray, tta: int) -> float:
    """Test accuracy with no test-time augmentation (0), flips (1), or flips and 1 px translations (2)."""

    def mirrored(x):
        return np.asarray(model(x, training=False)) + np.asarray(model(x[:, :, ::-1], training=False))

    logits = []
    for start in range(0, len(images), 1000):
        x = images[start : start + 1000]
        if tta == 0:
            logits.append(np.asarray(model(x, training=False)))
        elif tta == 1:
            logits.append(mirrored(x))
        else:
            pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
            logits.append(2 * mirrored(x) + mirrored(pad[:, :32, :32]) + mirrored(pad[:, 2:, 2:]))
    return round(float(np.mean(np.argmax(np.concatenate(logits), axis=1) == labels)), 4)


if __name__ == "__main__":
    main()
