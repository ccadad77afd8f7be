"""The forward-pass pixel budget: small images keep the batch asked for, large ones get fewer per pass."""

from __future__ import annotations

from embedlab.core.runtime import FORWARD_BATCH_PIXELS, forward_batch_size


def test_forward_batches_are_cut_to_the_pixel_budget() -> None:
    assert forward_batch_size(256, 32) == 256 and forward_batch_size(256, 64) == 256  # CIFAR-10, digits, 64 px
    assert forward_batch_size(256, 224) == FORWARD_BATCH_PIXELS // (224 * 224) == 20
    assert forward_batch_size(8, 224) == 8  # never more than asked
    assert forward_batch_size(256, 5000) == 1  # never none
