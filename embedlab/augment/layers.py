"""On-the-fly augmentation as Keras preprocessing layers, built from ``augment.*``.

The layers work on float images in ``[0, 255]`` and are active only when called with ``training=True``, so the
same model graph serves training (augmented) and embedding (untouched).
"""

from __future__ import annotations

from embedlab.core.params import AugmentParams


def build_augmentation(params: AugmentParams, seed: int = 0):  # -> keras.Sequential
    """A Sequential of the enabled augmentations (empty when all are off)."""
    import keras

    layers: list[keras.Layer] = []
    if params.flip != "none" and not params.alternate_flip:  # alternating flips happen in the training data
        layers.append(keras.layers.RandomFlip(params.flip, seed=seed))
    if params.rotation:
        layers.append(keras.layers.RandomRotation(params.rotation, fill_mode="reflect", seed=seed + 1))
    if params.zoom:
        layers.append(keras.layers.RandomZoom(params.zoom, fill_mode="reflect", seed=seed + 2))
    if params.shift:
        layers.append(
            keras.layers.RandomTranslation(
                params.shift, params.shift, fill_mode="reflect", interpolation=params.shift_interpolation, seed=seed + 3
            )
        )
    if params.shear:
        layers.append(keras.layers.RandomShear(params.shear, params.shear, fill_mode="reflect", seed=seed + 4))
    if params.contrast:
        layers.append(keras.layers.RandomContrast(params.contrast, value_range=(0, 255), seed=seed + 5))
    return keras.Sequential(layers, name="augmentation")
