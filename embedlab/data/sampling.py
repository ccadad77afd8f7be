"""Epoch orders that depend only on (seed, epoch), so a resumed run sees exactly the batches it would have seen."""

from __future__ import annotations

import numpy as np


def shuffled_order(num_items: int, seed: int, epoch: int) -> np.ndarray:
    """A plain shuffle of ``range(num_items)`` for one epoch."""
    return np.random.default_rng([seed, epoch]).permutation(num_items)


def class_balanced_order(labels: np.ndarray, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """Indices for one epoch in batches of P classes × K images (K ≥ 2), as triplet mining needs.

    Every batch holds ``batch_size // K`` classes with ``K = max(2, batch_size // n_classes)`` images each, drawn
    without replacement within the epoch where a class has enough images (with replacement only for classes
    smaller than K). The epoch has ``ceil(len(labels) / batch_size)`` full batches.
    """
    rng = np.random.default_rng([seed, epoch])
    classes = np.unique(labels)
    per_class = max(2, batch_size // len(classes))
    classes_per_batch = max(1, min(len(classes), batch_size // per_class))
    pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    batches = []
    for _ in range(-(-len(labels) // batch_size)):
        chosen = rng.choice(classes, size=classes_per_batch, replace=False)
        batch = []
        for c in chosen:
            members = np.flatnonzero(labels == c)
            if len(pools[c]) < per_class:
                pools[c] += list(rng.permutation(members))
            take, pools[c] = pools[c][:per_class], pools[c][per_class:]
            if len(set(take)) < min(per_class, len(members)):
                take = list(rng.choice(members, size=per_class, replace=len(members) < per_class))
            batch += take
        batches.append(rng.permutation(batch))
    return np.concatenate(batches).astype(np.int64)


def class_balanced_subset(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Sorted indices of at most ``per_class`` items of every class, drawn with ``seed``: a training budget that
    leaves the evaluation splits whole. ``None`` keeps everything. Budgets are nested (a larger one keeps every
    image of a smaller one), so a learning curve adds data instead of swapping it."""
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def sample_per_class(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Up to ``size`` row indices, drawn as evenly across classes as their counts allow; sorted."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    chosen: list[int] = []
    depth = 0
    while len(chosen) < min(size, len(labels)):
        for c in classes:
            if depth < len(pools[c]) and len(chosen) < size:
                chosen.append(int(pools[c][depth]))
        depth += 1
    return np.sort(np.asarray(chosen, np.int64))
