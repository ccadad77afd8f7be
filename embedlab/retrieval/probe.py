"""The linear probe: how linearly separable the classes are in an embedding, a check beside the kNN metrics."""

from __future__ import annotations

import numpy as np


def linear_probe_accuracy(
    train_vectors: np.ndarray,
    train_labels: np.ndarray,
    test_vectors: np.ndarray,
    test_labels: np.ndarray,
    *,
    seed: int,
) -> float:
    """Accuracy on the test rows of a logistic regression fitted on the train rows (NaN when either side cannot
    give one: no test rows, or fewer than two training classes)."""
    from sklearn.linear_model import LogisticRegression

    if len(test_labels) == 0 or len(np.unique(train_labels)) < 2:
        return float("nan")
    probe = LogisticRegression(max_iter=2000, random_state=seed)
    probe.fit(train_vectors, train_labels)
    return float(probe.score(test_vectors, test_labels))
