"""Recorded runs: copy a finished pipeline's small outputs into a results folder, and print its table from them.

A run worth keeping (the CIFAR-10 recipe) is made in its own clone: ``dvc repro`` on the recipe's params, then
``embedlab results collect <clone> results/<name>``. The folder holds what a reader needs to trust the numbers
(params, lock, every metrics file, curves, pictures, the machine) and ``embedlab results table`` prints the results
table from those files, so no number is typed by hand.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from embedlab.core.backbones import BACKBONES
from embedlab.core.errors import UserError
from embedlab.core.files import write_json
from embedlab.core.layout import RAW_PIXELS, STACK, Layout

COPIED = ("params.yaml", "dvc.lock", "metrics", "reports", "dvclive", "plots")
# Left out: per-query confusion rows (plots/retrieval/confusion, half a megabyte a model on CIFAR-10, what
# `dvc plots show` draws in the run's own clone) and temporary or hidden files.
SKIPPED = ("confusion", "*.tmp", ".*")


def collect(run_dir: str | Path, out_dir: str | Path, *, command: str, pipeline_seconds: float | None) -> Path:
    """Copy the run's params, lock, metrics, dvclive logs and plots into ``out_dir`` and describe the run."""
    from embedlab.core.runtime import cpu_description

    run, out = Path(run_dir), Path(out_dir)
    if not Layout(run).metrics("retrieval").is_dir():
        raise UserError(f"{run}/metrics/retrieval is missing: run `dvc repro` in {run} first")
    out.mkdir(parents=True, exist_ok=True)
    # A clone keeps the files of backbones its params no longer train (the lock's stages, logs, metrics, plots of
    # the pipeline it was cloned from): they did not come from this run, so they stay behind.
    stale = set(BACKBONES) - set(yaml.safe_load(Layout(run).params.read_text())["backbones"])
    skipped = shutil.ignore_patterns(*SKIPPED)

    def ignore(directory: str, names: list[str]) -> set[str]:
        return skipped(directory, names) | {n for n in names if n.split(".")[0].split("_")[0] in stale}

    for name in COPIED:
        source, target = run / name, out / name
        if target.is_dir():
            shutil.rmtree(target)
        if source.is_dir():
            shutil.copytree(source, target, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, target)
    if (out / "dvc.lock").exists():
        lock = yaml.safe_load((out / "dvc.lock").read_text())
        lock["stages"] = {k: v for k, v in lock["stages"].items() if k.partition("@")[2] not in stale}
        (out / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=run, capture_output=True, text=True).stdout.strip()
    description = {"command": command, "commit": commit, "cpu": cpu_description(), "pipeline_seconds": pipeline_seconds}
    write_json(out / "run.json", {**description, "environment": environment(run)})
    return out


def environment(run: Path) -> dict[str, object]:
    """Which software made the run: the hash of the run's ``requirements.lock`` (the exact versions, when it was
    installed from it) and the installed versions of the libraries that change output bytes."""
    import hashlib
    import platform
    from importlib import metadata

    lock = run / "requirements.lock"
    versions = {}
    for package in ("tensorflow", "keras", "numpy", "scikit-learn", "faiss-cpu", "pillow", "dvc"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "requirements_lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest() if lock.exists() else None,
        "python": platform.python_version(),
        "packages": versions,
    }


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def read_report(root: str | Path, kind: str, name: str) -> dict:
    """A model's full figures: ``reports/<kind>/<name>.json``, or ``metrics/`` in runs recorded before the headline
    metrics and the reports were split."""
    layout = Layout(Path(root))
    full = layout.report(kind, name)
    return _read(full if full.exists() else layout.metrics(kind, name))


def table_rows(results_dir: str | Path) -> list[dict[str, object]]:
    """One row per model (backbones in params order, then the stack and raw pixels) from the metrics files."""
    root = Path(results_dir)
    params = yaml.safe_load(Layout(root).params.read_text())
    rows = []
    for name in [*params["backbones"], STACK, RAW_PIXELS]:
        retrieval = read_report(root, "retrieval", name)
        if not retrieval:
            continue
        train = read_report(root, "train", name)
        rows.append(
            {
                "model": name,
                "map@5": retrieval.get("map@5"),
                "precision@1": retrieval.get("precision@1"),
                "map@r": retrieval.get("map@r"),
                "knn_accuracy@5": retrieval.get("knn_accuracy@5"),
                "linear_probe_accuracy": retrieval.get("linear_probe_accuracy"),
                "test_accuracy": train.get("test_accuracy"),
                "test_flip_averaged_accuracy": train.get("test_flip_averaged_accuracy"),
                "test_flip_translate_averaged_accuracy": train.get("test_flip_translate_averaged_accuracy"),
                "train_images": train.get("train_images"),
                "epochs": train.get("epochs_run"),
                "train_minutes": round(train["wall_seconds"] / 60, 1) if "wall_seconds" in train else None,
                "images_per_second": train.get("epoch_images_per_second"),
            }
        )
    return rows


SCORES = (
    "map@5", "precision@1", "map@r", "knn_accuracy@5", "linear_probe_accuracy", "test_accuracy",
    "test_flip_averaged_accuracy", "test_flip_translate_averaged_accuracy",
)  # fmt: skip


def _cell(key: str, value: object) -> str:
    """Scores with four decimals, minutes with one, counts and rates as they are."""
    if value is None:
        return "–"
    if key in SCORES:
        return f"{value:.4f}"
    return f"{value:.1f}" if key == "train_minutes" else str(value)


def markdown_table(results_dir: str | Path) -> str:
    """The results table, as the README and the CIFAR-10 notes show it."""
    headers = [
        "model", "mAP@5", "P@1", "MAP@R", "kNN acc@5", "linear probe", "softmax test acc", "flip-averaged",
        "flips + shifts", "train images", "epochs", "train min", "img/s",
    ]  # fmt: skip
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in table_rows(results_dir):
        cells = [f"**{row['model']}**" if row["model"] == STACK else str(row["model"])]
        cells += [_cell(key, value) for key, value in list(row.items())[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
