"""The augmentation layers: airbench's alternating flip and whole-pixel shifts."""

from __future__ import annotations

import numpy as np


def test_alternating_flip_shows_every_image_both_ways_in_two_epochs() -> None:
    from embedlab.core.params import TrainParams
    from embedlab.train.data import TrainingData

    images = np.random.default_rng(0).integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    data = TrainingData({"train": (images, np.arange(40) % 2)}, 2, 4, [], TrainParams(batch_size=16, seed=3))
    order = np.random.default_rng(1).permutation(40)
    seen = []
    for epoch in range(3):
        batches = data.train_dataset(order, None, flip_parity=epoch % 2).as_numpy_iterator()
        seen.append(np.concatenate([x for x, _ in batches]))
    mirrored = [np.all(epoch == images[order][:, :, ::-1], axis=(1, 2, 3)) for epoch in seen]
    kept = [np.all(epoch == images[order], axis=(1, 2, 3)) for epoch in seen]
    assert np.all(mirrored[0] | kept[0]) and 10 < mirrored[0].sum() < 30  # a fair coin per image
    np.testing.assert_array_equal(mirrored[1], kept[0])  # the odd epoch flips every image the other way
    np.testing.assert_array_equal(mirrored[2], mirrored[0])  # and the next even epoch flips it back
    coins = np.random.default_rng(3).random(40) < 0.5  # the seeded coins, in the data's row order
    np.testing.assert_array_equal(mirrored[0], coins[order])


def test_nearest_shift_moves_images_by_whole_pixels() -> None:
    from embedlab.augment.layers import build_augmentation
    from embedlab.core.params import AugmentParams

    images = np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3)).astype("float32")
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="symmetric")  # Keras reflect: edge repeated
    for interpolation, whole in (("nearest", True), ("bilinear", False)):
        augment = build_augmentation(AugmentParams(shift=2 / 16, shift_interpolation=interpolation), seed=0)
        out = np.asarray(augment(images, training=True))
        crops = [padded[:, 2 + dy : 18 + dy, 2 + dx : 18 + dx] for dy in range(-2, 3) for dx in range(-2, 3)]
        matched = np.any([np.all(np.abs(out - c) < 1e-3, axis=(1, 2, 3)) for c in crops], axis=0)
        assert matched.all() if whole else not matched.all()
