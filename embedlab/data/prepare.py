"""The preprocess stage: seeded stratified splits and resizing into ``data/prepared`` (its format:
:mod:`embedlab.data.prepared`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from embedlab.core.errors import UserError
from embedlab.core.files import atomic_dir, write_json
from embedlab.core.params import DataParams
from embedlab.data.images import fit_to_square
from embedlab.data.raw import RawDataset

SPLITS = ("train", "val", "test")


def _take_per_class(
    rows: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` into (taken, rest), taking ``fraction`` of every class (at least one when a class has two)."""
    taken, rest = [], []
    for label in np.unique(labels[rows]):
        members = rng.permutation(rows[labels[rows] == label])
        count = round(fraction * len(members))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        taken.append(members[:count])
        rest.append(members[count:])
    return np.sort(np.concatenate(taken)), np.sort(np.concatenate(rest))


def assign_splits(raw_splits: np.ndarray, labels: np.ndarray, params: DataParams) -> np.ndarray:
    """Return a split name per image (``""`` = dropped by ``max_per_class``), seeded and stratified by label.

    An official ``test`` (or ``val``) split from the source is kept as it is; otherwise ``test_fraction`` of every
    class becomes test. ``val_fraction`` of every class of what remains for training becomes validation.
    """
    rng = np.random.default_rng(params.seed)
    keep = np.ones(len(labels), dtype=bool)
    if params.max_per_class:
        for split in np.unique(raw_splits):
            for label in np.unique(labels):
                members = np.flatnonzero((raw_splits == split) & (labels == label))
                if len(members) > params.max_per_class:
                    keep[rng.permutation(members)[params.max_per_class :]] = False
    out = np.where(keep, raw_splits, "").astype(object)
    pool = np.flatnonzero(keep & ~np.isin(raw_splits, ["test", "val"]))
    if not np.any(keep & (raw_splits == "test")):
        test, pool = _take_per_class(pool, labels, params.test_fraction, rng)
        out[test] = "test"
    if not np.any(keep & (raw_splits == "val")):
        val, pool = _take_per_class(pool, labels, params.val_fraction, rng)
        out[val] = "val"
    out[pool] = "train"
    return out.astype(str)


@dataclass
class PreparedSummary:
    """What preprocess reports in ``reports/data.json``: images per split and class, and how many were skipped."""

    counts: dict[str, int]
    per_class: dict[str, dict[str, int]]
    skipped: int


def prepare(raw_dir: str | Path, out_dir: str | Path, params: DataParams) -> PreparedSummary:
    """Resize every kept image to ``params.image_size`` and write ``data/prepared`` atomically."""
    raw = RawDataset.open(raw_dir)
    labels = raw.index["label"].to_numpy()
    if len(np.unique(labels)) < 2:
        found = ", ".join(raw.class_names) or "none"
        raise UserError(
            f"data: {len(np.unique(labels))} class with usable images ({found}); retrieval and the classifier need "
            "at least two (data.path: one folder per class)"
        )
    splits = assign_splits(raw.index["split"].to_numpy().astype(str), labels, params)
    rows = np.flatnonzero(splits != "")
    size = params.image_size
    with atomic_dir(out_dir) as tmp:
        # Written row by row through a buffered file, not a memory map: a map keeps every page written in the
        # process's resident memory until the kernel flushes it, so memory would grow with the dataset.
        shape = (len(rows), size, size, 3)
        with (tmp / "images.npy").open("wb") as images:
            np.lib.format.write_array_header_1_0(
                images,
                {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape},
            )
            # disable=None: the bar shows on a terminal and stays out of a log (a CI run, `dvc repro > log`)
            resizing = tqdm(raw.images(rows), total=len(rows), desc="resizing", unit="img", leave=False, disable=None)
            for image in resizing:
                pixels = fit_to_square(image, size, params.fit)
                assert pixels.shape == shape[1:] and pixels.dtype == np.uint8, pixels.shape
                images.write(np.ascontiguousarray(pixels).data)
        index = pd.DataFrame(
            {
                "id": raw.index["id"].to_numpy()[rows],
                "label": labels[rows],
                "class_name": np.asarray(raw.class_names)[labels[rows]],
                "split": splits[rows],
            }
        )
        index.to_csv(tmp / "index.csv", index=False)
        write_json(
            tmp / "info.json",
            {"source": raw.source, "class_names": raw.class_names, "image_size": size, "fit": params.fit},
        )
        counts = {split: int((index["split"] == split).sum()) for split in SPLITS}
        per_class = {
            name: {split: int(((index["class_name"] == name) & (index["split"] == split)).sum()) for split in SPLITS}
            for name in raw.class_names
        }
        totals = {**counts, "total": sum(counts.values())}
        write_json(
            tmp / "report.json",
            {"images": totals, "per_class": per_class, "skipped": len(raw.skipped), "skipped_files": raw.skipped},
        )
    return PreparedSummary(counts, per_class, len(raw.skipped))
