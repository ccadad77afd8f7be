"""The augment_preview stage and the training augmentation: Keras layers built from ``augment.*``."""
