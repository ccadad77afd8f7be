"""Training images/s per backbone: plain Keras, the train stage's own loop, and the machine's roofline.

    python benchmarks/train_throughput.py                          # the tables in benchmarks/README.md (~25 min)
    python benchmarks/train_throughput.py --backbones resnet50 --epochs 2 --no-stage   # a quick look
    python benchmarks/train_throughput.py --roofline-of results/cifar10   # a recorded run against the roofline (~1 min)
    python benchmarks/train_throughput.py --stage-vs-plain --epochs 6   # the stage loop against a plain fit, per CPU
    python benchmarks/train_throughput.py --precision-of results/cifar10 --prepared <its data/prepared>  # fp32 vs bf16

For every backbone, on the same data (the digits train split, 32 px, as `dvc repro` prepares it, augmented as
params.yaml says), batch size and image size:

- **plain fit**: one ``model.fit`` over ``--epochs`` epochs of an in-memory ``tf.data`` pipeline, the same model
  and augmentation as the stage; once per setting of oneDNN (on/off) and, where the CPU has AVX512_BF16 or AMX,
  mixed bfloat16 (on/off).
- **stage loop**: the train stage's ``Trainer`` for the same epochs (per-epoch validation, BatchNorm recalibration
  and checkpoints included), with the project's defaults; then a plain fit of the trained model in the same process,
  and the ratio of the two (whole stage epochs ÷ plain-fit epochs).
- **roofline**: the measured float32 matmul GFLOP/s of the same process divided by the model's training FLOPs per
  image (3 × the forward pass: convolutions and dense layers, counted from the layer shapes).
- **CPU use**: process CPU seconds per wall second during the timed epochs (2.0 = two cores busy).
- **precision of a recipe** (``--precision-of``): a recorded run's own params and backbones, a plain fit in float32
  and in mixed bfloat16 on the first ``--images`` training images of its prepared data, for a recipe too long to
  time whole per setting.

Every figure is the median epoch after the first (graph tracing): on the shared 2-core machines here single epochs
run up to 1.7× slower at random, with or without our code around them, and the median keeps that noise out.
Each setting runs in its own process (oneDNN is chosen when TensorFlow is imported). mixed bfloat16 with oneDNN off
runs on emulated kernels (15–29 img/s measured for ResNet50 and DenseNet121): it is left out. Results go to stdout
as a table and to ``--out`` (rewritten after every setting) as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from embedlab.core.runtime import cpu_description

RESULTS = Path(__file__).parent / "results"  # every benchmark writes its results file here, beside the scripts

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BACKBONES = ("smallnet", "densenet121", "resnet50", "vgg16", "mobilenetv2")


def matmul_gflops(size: int = 2048, repeats: int = 20) -> float:
    """float32 matrix-multiply GFLOP/s through TensorFlow (the kernels training uses), best of ``repeats``."""
    import tensorflow as tf

    a = tf.random.stateless_normal((size, size), seed=(1, 2))
    b = tf.random.stateless_normal((size, size), seed=(3, 4))
    (a @ b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        (a @ b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def forward_flops(model) -> int:
    """Multiply-add FLOPs (×2) of one image through every convolution and dense layer, nested models included."""
    import keras

    total = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            out = layer.output.shape
            total += 2 * out[1] * out[2] * out[3] * int(np.prod(layer.kernel_size))
        elif isinstance(layer, keras.layers.Conv2D):
            out, cin = layer.output.shape, layer.input.shape[-1]
            total += 2 * out[1] * out[2] * out[3] * cin * int(np.prod(layer.kernel_size)) // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(total)


def _epoch_timer():
    """A Keras callback recording each epoch's wall and process CPU seconds."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.wall: list[float] = []
            self.cpu: list[float] = []

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self._start = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, epoch, logs=None) -> None:
            self.wall.append(time.perf_counter() - self._start[0])
            self.cpu.append(time.process_time() - self._start[1])

    return EpochTimer()


def worker(args: argparse.Namespace) -> dict:
    """One setting in this process: plain fit, or the stage loop, for one backbone."""

    from embedlab.augment.layers import build_augmentation
    from embedlab.core.params import load_params
    from embedlab.train.data import TrainingData
    from embedlab.train.loop import Trainer
    from embedlab.train.optimization import compile_trainer, make_optimizer
    from embedlab.train.stopwatch import EPOCH_PARTS

    params = load_params(args.params)
    model_params, train_params = (
        params.for_backbone(args.backbones[0])
        if args.backbones[0] in params.backbones
        else (
            params.model,
            params.train,
        )
    )
    train_params = train_params.model_copy(update={"epochs": args.epochs + 1, "patience": args.epochs + 1})
    train_params = train_params.model_copy(update={"mixed_precision": "on" if args.bf16 else "off"})
    result: dict = {"backbone": args.backbones[0], "mode": args.worker, "bf16": args.bf16, **cpu_description()}
    if args.worker == "stage":
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(
                args.backbones[0],
                model_params,
                train_params,
                params.augment,
                prepared_dir=args.prepared,
                work_dir=Path(tmp) / "work",
                live_dir=Path(tmp) / "live",
            )
            trained = trainer.run()
        epochs = trainer.clock.epochs[1:]
        seconds = [sum(epoch.get(part, 0.0) for part in EPOCH_PARTS) for epoch in epochs]
        # The plain-fit reference again, in this process right after the stage loop (same model, data, warm state):
        # separate processes drift by up to ±10 % on these shared machines, which would swamp the ratio.
        data = TrainingData.load(Path(args.prepared), train_params)
        augment = build_augmentation(params.augment, seed=train_params.seed)
        timer = _epoch_timer()
        trained.trainer.fit(
            data.train_dataset(np.arange(data.train_size), augment), epochs=args.epochs, verbose=0, callbacks=[timer]
        )
        plain = data.train_size / float(np.median(timer.wall))
        stage = epochs[0]["images"] / float(np.median(seconds))
        # Epochs of one process still vary (before finish_pipeline, by an idle wait after some of them: 5.4 s or
        # 10.3 s, nothing between); the fastest epoch of each is the like-for-like ratio.
        best_plain, best_stage = data.train_size / min(timer.wall), epochs[0]["images"] / min(seconds)
        result.update(
            images_per_second=round(stage, 1),
            plain_fit_images_per_second=round(plain, 1),
            stage_over_plain_fit=round(stage / plain, 3),
            best_epoch_images_per_second=round(best_stage, 1),
            best_epoch_plain_fit_images_per_second=round(best_plain, 1),
            best_epoch_stage_over_plain_fit=round(best_stage / best_plain, 3),
            epoch_seconds=[round(s, 3) for s in seconds],
            plain_fit_epoch_seconds=[round(s, 3) for s in timer.wall],
            fit_images_per_second=round(epochs[0]["images"] / float(np.median([e["fit"] for e in epochs])), 1),
            cpu_cores_used=trainer.clock.cores_used(skip=1),
            seconds_per_epoch={
                part: round(sum(e.get(part, 0) for e in epochs) / len(epochs), 3) for part in EPOCH_PARTS
            },
        )
        return result

    # The stage's own build (seeds, dtype policy, data, the models as the stage makes them), so the plain fit trains
    # exactly the stage's model.
    with tempfile.TemporaryDirectory() as tmp:
        run = Trainer(
            args.backbones[0], model_params, train_params, params.augment, prepared_dir=args.prepared,
            work_dir=Path(tmp) / "work", live_dir=Path(tmp) / "live",
        ).build()  # fmt: skip
        run.log.end()
    models, data = run.models, run.data
    images = data.splits["train"][0][: args.images]
    steps = (args.epochs + 1) * -(-len(images) // train_params.batch_size)
    compile_trainer(models.trainer, train_params, make_optimizer(train_params, train_params.lr, steps))
    dataset = data.train_dataset(np.arange(len(images)), run.augmentation)
    models.trainer.fit(dataset, epochs=1, verbose=0)  # trace + first epoch, not timed
    timer = _epoch_timer()
    models.trainer.fit(dataset, epochs=args.epochs, verbose=0, callbacks=[timer])
    flops = 3 * forward_flops(models.trainer)
    gflops = matmul_gflops()
    result.update(
        images_per_second=round(len(images) / float(np.median(timer.wall)), 1),
        cpu_cores_used=round(sum(timer.cpu) / sum(timer.wall), 2),
        train_gflop_per_image=round(flops / 1e9, 3),
        matmul_gflops=round(gflops, 1),
        roofline_images_per_second=round(gflops * 1e9 / flops, 1),
        # the trained weights' hash: equal across runs with the same kernels, so it shows what reproduces where
        weights_md5=hashlib.md5(
            b"".join(np.ascontiguousarray(w).tobytes() for w in models.trainer.get_weights())
        ).hexdigest(),
    )
    return result


def run_child(args: argparse.Namespace, backbone: str, mode: str, onednn: str, bf16: bool, isa: str = "") -> dict:
    command = [sys.executable, __file__, "--worker", mode, "--backbones", backbone, "--epochs", str(args.epochs)]
    command += ["--prepared", args.prepared, "--params", str(args.params)] + (["--bf16"] if bf16 else [])
    command += ["--images", str(args.images)] if args.images else []
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn}
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa  # what oneDNN would pick on a CPU without the newer instructions
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"{backbone} {mode} oneDNN={onednn} bf16={bf16} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def stage_vs_plain(args: argparse.Namespace) -> None:
    """The train stage's epochs against a plain fit of the same model in the same process, per backbone, kept in
    ``stage_vs_plain_fit.json`` under this CPU's kind (its model and kernel flags), beside the other kinds measured."""
    backbones = args.backbones if args.backbones != list(DEFAULT_BACKBONES) else ["smallnet", "resnet50", "densenet121"]
    cpu = cpu_description()
    kind = f"{cpu['cpu']} ({' '.join(cpu['flags'])})"
    out = RESULTS / "stage_vs_plain_fit.json"
    kinds = json.loads(out.read_text()) if out.exists() else {}
    rows = []
    for backbone in backbones:
        rows.append(run_child(args, backbone, "stage", "1", False))
        row = rows[-1]
        print(
            f"{backbone}: stage {row['images_per_second']} img/s, plain fit {row['plain_fit_images_per_second']}: "
            f"{row['stage_over_plain_fit']:.2f} (fastest epochs {row['best_epoch_stage_over_plain_fit']:.2f}), "
            f"cores {row['cpu_cores_used']}",
            flush=True,
        )
    kinds[kind] = {"command": " ".join(sys.argv), "cpu": cpu, "epochs": args.epochs, "rows": rows}
    out.write_text(json.dumps(kinds, indent=2) + "\n")
    print(f"CPU: {kind}\nwrote {out}")


def _label(row: dict) -> str:
    if row["mode"] == "stage":
        return f"stage loop (oneDNN, fp32), {row['stage_over_plain_fit']:.2f}x plain fit"
    onednn = "off" if row["onednn"] == "0" else ("on, AVX2 cap" if row["onednn_max_isa"] == "AVX2" else "on")
    return f"plain fit oneDNN {onednn}, {'bf16' if row['bf16'] else 'fp32'}"


def recorded_run_roofline(results_dir: Path, out: Path) -> None:
    """Each backbone's img/s in a recorded run (``embedlab results collect``) against this machine's roofline at
    that run's image size and class count: for a run too long to repeat here per setting. Written to ``out`` with
    this CPU's description: a run's minutes mean little without the matmul rate of the machine they were timed on."""
    import yaml

    from embedlab.cli.results import read_report
    from embedlab.core.params import parse_params
    from embedlab.models.backbones import build_models

    params = parse_params(yaml.safe_load((results_dir / "params.yaml").read_text()))
    gflops, cpu = matmul_gflops(), cpu_description()
    print(f"CPU: {json.dumps(cpu)}\nmatmul: {gflops:.0f} GFLOP/s (float32)\n")
    print("| backbone | train images | batch | fit img/s | epoch img/s | GFLOP/img (train) | roofline img/s | % |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for name in params.backbones:
        model_params, train_params = params.for_backbone(name)
        metrics = read_report(results_dir, "train", name)
        models = build_models(name, params.data.image_size, 10, model_params, seed=0)
        train_gflop = 3 * forward_flops(models.trainer) / 1e9
        roof = gflops / train_gflop
        share = metrics["train_images_per_second"] / roof
        rows.append(
            {
                "backbone": name,
                "train_images": metrics["train_images"],
                "batch_size": train_params.batch_size,
                "fit_images_per_second": metrics["train_images_per_second"],
                "epoch_images_per_second": metrics["epoch_images_per_second"],
                "train_gflop_per_image": round(train_gflop, 3),
                "roofline_images_per_second": round(roof, 1),
                "share_of_roofline": round(share, 3),
            }
        )
        print(
            f"| {name} | {metrics['train_images']:,} | {train_params.batch_size} "
            f"| {metrics['train_images_per_second']} | {metrics['epoch_images_per_second']} | {train_gflop:.3f} "
            f"| {roof:.0f} | {100 * share:.0f} % |"
        )
    print("\n(bfloat16 runs are measured against the float32 roofline.)")
    report = {"run": str(results_dir), "cpu": cpu, "matmul_gflops": round(gflops, 1), "rows": rows}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def recipe_precision(args: argparse.Namespace) -> None:
    """A recorded run's backbones, each as a plain fit in float32 and in mixed bfloat16 (oneDNN on), with the run's
    own params on the first ``--images`` images of its prepared data; written to ``precision_<run>.json``."""
    import yaml

    from embedlab.core.params import parse_params

    run = args.precision_of
    args.params = run / "params.yaml"
    args.images = args.images or 8192
    cpu = cpu_description()
    out = args.out or RESULTS / f"precision_{run.name}.json"
    rows = []
    for backbone in parse_params(yaml.safe_load(args.params.read_text())).backbones:
        for bf16 in (False, True):
            rows.append(run_child(args, backbone, "fit", "1", bf16))
            out.write_text(
                json.dumps({"run": str(run), "images": args.images, "cpu": cpu, "rows": rows}, indent=2) + "\n"
            )
        fp32, bf16_row = rows[-2]["images_per_second"], rows[-1]["images_per_second"]
        print(f"{backbone}: float32 {fp32} img/s, bfloat16 {bf16_row} img/s: {bf16_row / fp32:.2f}x", flush=True)
    print(f"CPU: {json.dumps(cpu)}\nwrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--roofline-of", type=Path, help="a results folder: its recorded img/s against the roofline")
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES))
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs (after one untimed warm-up epoch)")
    parser.add_argument("--prepared", default="data/prepared", help="`dvc repro preprocess` makes it")
    parser.add_argument("--no-stage", action="store_true", help="skip the stage-loop runs")
    parser.add_argument(
        "--stage-vs-plain",
        action="store_true",
        help="only the stage loop against a plain fit (smallnet, ResNet50, DenseNet121 unless --backbones says), "
        "kept per CPU kind in stage_vs_plain_fit.json",
    )
    parser.add_argument(
        "--precision-of", type=Path, help="a results folder: its recipe's plain fit in float32 and in bfloat16"
    )
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, help="plain fits: the first N training images (--precision-of: 8192)")
    parser.add_argument(
        "--out", type=Path, help="default: train_throughput.json, roofline_<run>.json or precision_<run>.json"
    )
    parser.add_argument("--worker", choices=("fit", "stage"), help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.roofline_of:
        recorded_run_roofline(args.roofline_of, args.out or RESULTS / f"roofline_{args.roofline_of.name}.json")
        return
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if not (REPO / args.prepared / "index.csv").exists():
        raise SystemExit(f"{args.prepared} is missing: run `dvc repro preprocess` first")
    if args.stage_vs_plain:
        stage_vs_plain(args)
        return
    if args.precision_of:
        recipe_precision(args)
        return

    cpu = cpu_description()
    bf16_options = [False, True] if {"avx512_bf16", "amx_bf16"} & set(cpu["flags"]) else [False]
    rows: list[dict] = []
    out = args.out or RESULTS / "train_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def measure(backbone: str, mode: str, onednn: str = "1", bf16: bool = False, isa: str = "") -> None:
        rows.append(run_child(args, backbone, mode, onednn, bf16, isa))
        print(f"  {backbone}: {_label(rows[-1])}: {rows[-1]['images_per_second']} img/s", flush=True)
        out.write_text(json.dumps({"cpu": cpu, "epochs": args.epochs, "rows": rows}, indent=2) + "\n")

    for backbone in args.backbones:
        for bf16 in bf16_options:
            measure(backbone, "fit", bf16=bf16)
        measure(backbone, "fit", onednn="0")
        if "avx512f" in cpu["flags"]:
            measure(backbone, "fit", isa="AVX2")
        if not args.no_stage:
            measure(backbone, "stage")

    print(f"\nCPU: {cpu['cpu']}, {cpu['cores']} cores, flags: {' '.join(cpu['flags'])}")
    print(
        f"median of {args.epochs} timed epochs of the digits train split at 32 px, batch size and augmentation from "
        "params.yaml"
    )
    header = (
        f"| {'backbone':<12}| {'run':<52}| {'img/s':>7} | {'% roofline':>10} | {'CPU cores used':>14} "
        f"| {'weights md5':<12}|"
    )
    print(header + "\n|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for backbone in args.backbones:
        mine = [row for row in rows if row["backbone"] == backbone]
        fit = next(
            row
            for row in mine
            if row["mode"] == "fit" and row["onednn"] == "1" and not row["bf16"] and row["onednn_max_isa"] == "all"
        )
        roof = fit["roofline_images_per_second"]
        for row in mine:
            pct = 100 * row["images_per_second"] / roof
            print(
                f"| {backbone:<12}| {_label(row):<52}| {row['images_per_second']:>7.1f} | {pct:>9.0f}% "
                f"| {row['cpu_cores_used']:>14.2f} | {row.get('weights_md5', '')[:10]:<12}|"
            )
        print(
            f"| {backbone:<12}| {'roofline':<52}| {roof:>7.1f} | {'100%':>10} | {'':>14} | {'':<12}|  "
            f"({fit['train_gflop_per_image']} GFLOP/img at {fit['matmul_gflops']} GFLOP/s)"
        )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
