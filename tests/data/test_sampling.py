"""Seeded epoch orders and the training budget's class-balanced subset."""

from __future__ import annotations

import numpy as np
import pytest

from embedlab.data.sampling import class_balanced_order, class_balanced_subset, shuffled_order

LABELS = np.repeat(np.arange(4), [10, 7, 3, 12])


def test_subset_takes_at_most_per_class_of_every_class_seeded() -> None:
    chosen = class_balanced_subset(LABELS, 5, seed=1)
    assert np.bincount(LABELS[chosen]).tolist() == [5, 5, 3, 5]  # a small class gives what it has
    assert np.all(np.diff(chosen) > 0)
    assert np.array_equal(chosen, class_balanced_subset(LABELS, 5, seed=1))
    assert not np.array_equal(chosen, class_balanced_subset(LABELS, 5, seed=2))
    assert np.array_equal(class_balanced_subset(LABELS, None, seed=1), np.arange(len(LABELS)))


def test_budgets_are_nested() -> None:
    small, large = class_balanced_subset(LABELS, 2, seed=0), class_balanced_subset(LABELS, 6, seed=0)
    assert len(small) == 8 and len(large) == 6 + 6 + 3 + 6
    assert set(small) <= set(large)


def test_shuffled_order_depends_only_on_seed_and_epoch() -> None:
    assert np.array_equal(shuffled_order(50, 3, 1), shuffled_order(50, 3, 1))
    assert not np.array_equal(shuffled_order(50, 3, 1), shuffled_order(50, 3, 2))
    assert sorted(shuffled_order(50, 3, 1)) == list(range(50))


@pytest.mark.parametrize("batch_size", [8, 6])
def test_class_balanced_batches_give_every_anchor_a_positive(batch_size: int) -> None:
    order = class_balanced_order(LABELS, batch_size, seed=0, epoch=0)
    assert len(order) == -(-len(LABELS) // batch_size) * batch_size
    for start in range(0, len(order), batch_size):
        counts = np.bincount(LABELS[order[start : start + batch_size]], minlength=4)
        assert counts[counts > 0].min() >= 2
