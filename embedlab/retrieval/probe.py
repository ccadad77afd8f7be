"""The linear probe: how linearly separable the classes are in an embedding, a check beside the kNN metrics."""

from __future__ import annotations

import numpy as np

# lbfgs iterations: unit embeddings of up to 4096 dimensions converge in a few hundred; the cap only bounds a
# pathological case, and scikit-learn's default 100 stops short on 50,000 CIFAR-10 rows (a ConvergenceWarning and
# a probe accuracy that depends on the cap).
PROBE_MAX_ITER = 2000


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
    probe = LogisticRegression(max_iter=PROBE_MAX_ITER, random_state=seed)
    probe.fit(train_vectors, train_labels)
    return float(probe.score(test_vectors, test_labels))
