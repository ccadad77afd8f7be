"""What each stage costs as the dataset grows: wall time and peak resident memory per stage, per dataset size.

A generated folder of class-named JPEG images (10 classes, seeded) goes through the stages a user runs on their own
photos, each one the real stage script in its own process: download (the ``folder`` source) → preprocess → one
training epoch of smallnet → embed → stack → evaluate with the exact index, then with faiss → ``embedlab serve``
start-up and p50 query latency. Peak RSS is each process's high-water mark (``VmHWM``, read as it exits; for the
server, after the queries), so it counts every page the process touched, file-backed ones included.

    python benchmarks/cost_curve.py                        # 10,000, 50,000 and 200,000 images at 64 px + 2,000 at 224
    python benchmarks/cost_curve.py --points 10000@64      # one point
    python benchmarks/cost_curve.py --plot-only            # redraw the picture from the results file
    python benchmarks/cost_curve.py --redo "evaluate (faiss)"  # measure a stage again (after a fix to it)

Each point needs its images on disk once (about 4 KB each at 64 px) in ``--work``, kept between runs: a point that
finished is not run again unless ``--again``, and one stopped part-way goes on from its next stage.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from embedlab.core.files import write_json
from embedlab.core.runtime import cpu_description

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "cost_curve.json"
DEFAULT_POINTS = ("10000@64", "50000@64", "200000@64", "2000@224")
CLASSES = 10
STAGES = (
    ("download", ["stages/download.py"]),
    ("preprocess", ["stages/preprocess.py"]),
    ("train (1 epoch)", ["stages/train.py", "smallnet"]),
    ("embed", ["stages/embed.py", "smallnet"]),
    ("stack", ["stages/stack.py"]),
    ("evaluate (exact)", ["stages/evaluate.py"]),
    ("evaluate (faiss)", ["stages/evaluate.py"]),
)


def generate_folder(root: Path, count: int, size: int, seed: int = 0) -> None:
    """``count`` JPEG images in ``root/<class>/``: each class a smooth colour pattern, each image that pattern shifted,
    scaled in brightness and noised, so that the classes can be learned but not by one pixel."""
    if (root / ".complete").exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (CLASSES, 4, 4, 3)).astype(np.float32)
    templates = np.stack(
        [np.asarray(Image.fromarray(c.astype(np.uint8)).resize((size, size), Image.BICUBIC)) for c in coarse]
    )
    for name in range(CLASSES):
        (root / f"class{name}").mkdir(parents=True)
    for start in range(0, count, 1000):
        n = min(1000, count - start)
        labels = np.arange(start, start + n) % CLASSES
        shifts = rng.integers(0, size, (n, 2))
        gains = rng.uniform(0.6, 1.2, (n, 1, 1, 1))
        noise = rng.normal(0, 25, (n, size, size, 3))
        for i in range(n):
            image = np.roll(templates[labels[i]], tuple(shifts[i]), axis=(0, 1)) * gains[i] + noise[i]
            buffer = io.BytesIO()
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
            (root / f"class{labels[i]}" / f"{start + i:06d}.jpg").write_bytes(buffer.getvalue())
    (root / ".complete").touch()


def params_for(images: Path, size: int, index: str) -> dict:
    """The repository's params.yaml, pointed at the generated folder, smallnet for one epoch, the given index."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source="folder", path=str(images), image_size=size)
    params["backbones"] = {"smallnet": {**params["backbones"]["smallnet"], "epochs": 1}}
    params["evaluate"]["index"] = index
    return params


# Runs a stage script and, at its exit, writes the process's VmHWM to the file named by EMBEDLAB_PEAK_FILE. Why not
# ru_maxrss from wait4: Linux starts a forked child's high-water mark at its parent's resident size, so every stage
# would report at least this benchmark's own memory.
PEAK_WRAPPER = """
import atexit, os, runpy, sys
def _peak():
    status = open("/proc/self/status").read().splitlines()
    kb = next(line.split()[1] for line in status if line.startswith("VmHWM"))
    open(os.environ["EMBEDLAB_PEAK_FILE"], "w").write(kb)
atexit.register(_peak)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_stage(workspace: Path, argv: list[str]) -> dict:
    """One stage script in its own process: wall seconds, CPU seconds (user + system, which another busy process on
    the machine changes far less than the wall time) and peak RSS (VmHWM)."""
    peak_file = workspace / "peak_kb"
    peak_file.unlink(missing_ok=True)
    log = (workspace / "stage.log").open("a")
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", PEAK_WRAPPER, str(REPO / argv[0]), *argv[1:]],
        cwd=workspace,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "EMBEDLAB_PEAK_FILE": str(peak_file)},
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed: see {workspace / 'stage.log'}")
    return {
        "seconds": round(seconds, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(int(peak_file.read_text()) / 1024, 1),
    }


def measure_serve(workspace: Path, queries: int = 50) -> dict:
    """``embedlab serve`` on the run: seconds until it listens, p50 latency of a query uploaded as PNG, its VmHWM."""
    import requests
    from serve_latency import start_server  # this folder's: the same server start-up as the latency benchmark

    start = time.perf_counter()
    server, url = start_server(workspace, "exact", [])
    try:
        startup = time.perf_counter() - start
        from embedlab.data.prepared import ImageRows

        images = ImageRows(workspace / "data" / "prepared" / "images.npy")
        picks = np.random.default_rng(0).choice(len(images), queries, replace=False)
        session, latencies = requests.Session(), []
        for row in picks:
            buffer = io.BytesIO()
            Image.fromarray(images[int(row)]).save(buffer, "PNG")
            began = time.perf_counter()
            response = session.post(f"{url}/api/search", params={"k": 8}, files={"image": ("q.png", buffer.getvalue())})
            response.raise_for_status()
            latencies.append(time.perf_counter() - began)
        status = Path(f"/proc/{server.pid}/status").read_text()
        hwm_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    finally:
        server.terminate()
        server.wait()
    return {
        "seconds": round(startup, 1),
        "p50_query_ms": round(1000 * float(np.median(latencies[5:])), 1),
        "peak_rss_mb": round(hwm_kb / 1024, 1),
    }


def run_point(work: Path, count: int, size: int, record, again: bool = False, redo: tuple[str, ...] = ()) -> None:
    """Every stage on ``count`` generated images at ``size`` px (``again``: from the first stage, in a fresh
    workspace; ``redo``: these stages again, on the workspace's earlier outputs), handing ``record`` the point as it
    stands after each stage (``complete`` once all have run)."""
    images = work / f"images-{count}-{size}"
    began = time.perf_counter()
    generate_folder(images, count, size)
    print(f"{count} images at {size} px: generated in {time.perf_counter() - began:.0f} s", flush=True)
    # A point's stages are recorded as each finishes, so a run stopped part-way (the 200,000-image point takes about
    # two hours on 2 cores) goes on from the next stage when started again.
    workspace, progress = work / f"run-{count}-{size}", work / f"run-{count}-{size}" / "progress.json"
    stages: dict[str, dict] = json.loads(progress.read_text()) if progress.exists() and not again else {}
    stages = {name: figures for name, figures in stages.items() if name not in redo}
    if not stages:
        shutil.rmtree(workspace, ignore_errors=True)
        workspace.mkdir(parents=True)
    point = {"images": count, "image_size": size, "complete": False, "stages": stages, "cpu": cpu_description()}
    for name, argv in STAGES:
        if name in stages:
            continue
        index = "faiss" if "faiss" in name else "exact"
        (workspace / "params.yaml").write_text(yaml.safe_dump(params_for(images, size, index), sort_keys=False))
        stages[name] = run_stage(workspace, argv)
        write_json(progress, stages)
        record(point)
        print(f"  {name:<18} {stages[name]}", flush=True)
    stages["serve"] = measure_serve(workspace)
    print(f"  {'serve':<18} {stages['serve']}", flush=True)
    report = json.loads((workspace / "reports" / "train" / "smallnet.json").read_text())
    point.update(
        complete=True,
        splits=json.loads((workspace / "reports" / "data.json").read_text())["images"],
        train_images=report["train_images"],
        train_images_per_second=report["train_images_per_second"],
        **{"smallnet_map@5": json.loads((workspace / "metrics" / "retrieval" / "smallnet.json").read_text())["map@5"]},
    )
    record(point)


def draw(results: dict, path: Path) -> None:
    """Two panels: seconds and peak RSS per stage against the number of images (64 px), log-log; the 224 px point
    as open markers; a point still running shows the stages it has finished."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(12, 4.6))
    points = results["points"]
    names = [name for name, _ in STAGES] + ["serve"]
    for i, name in enumerate(names):
        colour = f"C{i}"
        for size, marker, fill in ((64, "o", colour), (224, "s", "none")):
            # a point still running lacks its later stages
            chosen = sorted(
                (p for p in points if p["image_size"] == size and name in p["stages"]), key=lambda p: p["images"]
            )
            x, label = [p["images"] for p in chosen], (name if size == 64 else None)
            for axis, key in ((time_axis, "seconds"), (memory_axis, "peak_rss_mb")):
                y = [p["stages"][name][key] for p in chosen]
                axis.plot(
                    x,
                    y,
                    marker=marker,
                    color=colour,
                    markerfacecolor=fill,
                    label=label,
                    linestyle="-" if size == 64 else "none",
                )
    time_axis.set(xscale="log", yscale="log", xlabel="images", ylabel="wall seconds", title="time per stage")
    memory_axis.set(xscale="log", xlabel="images", ylabel="peak RSS, MB", title="peak resident memory per stage")
    time_axis.legend(fontsize=8, loc="upper left")
    sizes = sorted({p["images"] for p in points})
    for axis in (time_axis, memory_axis):
        axis.set_xticks(sizes, [f"{size // 1000:,}k" for size in sizes])
        axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axis.grid(True, which="both", alpha=0.3)
    cpu = points[-1]["cpu"]
    figure.suptitle(f"filled: 64 px, open squares: 224 px · {cpu['cpu']} · {' '.join(cpu['flags'])}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", nargs="+", default=list(DEFAULT_POINTS), help="IMAGES@PX, e.g. 10000@64")
    parser.add_argument("--work", type=Path, default=Path("/tmp/embedlab-cost-curve"), help="images and workspaces")
    parser.add_argument("--again", action="store_true", help="rerun points already in the results file")
    parser.add_argument("--redo", nargs="+", default=[], help="stage names to measure again (then serve)")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.exists() else {"points": []}

    def record(point: dict) -> None:
        """Put ``point`` in the results file in place of any earlier one of the same size, and redraw."""
        key = (point["images"], point["image_size"])
        others = [p for p in results["points"] if (p["images"], p["image_size"]) != key]
        results["points"] = sorted([*others, point], key=lambda p: (p["image_size"], p["images"]))
        write_json(args.out, results)
        draw(results, args.out.with_suffix(".png"))

    if not args.plot_only:
        for point in args.points:
            count, size = (int(part) for part in point.split("@"))
            done = [p for p in results["points"] if (p["images"], p["image_size"]) == (count, size)]
            if done and done[0].get("complete", True) and not (args.again or args.redo):
                continue
            run_point(args.work, count, size, record, again=args.again, redo=tuple(args.redo))
    draw(results, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
