"""Test-time views: which pixels each view shows, and the weights airbench averages them with."""

import numpy as np
import pytest

from embedlab.augment.test_time import TestTimeViews, mirror, shift


def _image() -> np.ndarray:
    """One 3 x 4 image whose pixel (row r, column c) holds 10 r + c in every channel."""
    grid = 10 * np.arange(3)[:, None] + np.arange(4)[None, :]
    return np.repeat(grid[None, :, :, None], 3, axis=3).astype(np.uint8)


def test_a_shift_moves_the_content_one_pixel_and_reflects_the_border() -> None:
    image = _image()
    down_right, up_left = shift(image, 1)[0, :, :, 0], shift(image, -1)[0, :, :, 0]
    np.testing.assert_array_equal(down_right[1:, 1:], image[0, :-1, :-1, 0])  # pixel (r, c) moved to (r+1, c+1)
    np.testing.assert_array_equal(up_left[:-1, :-1], image[0, 1:, 1:, 0])  # pixel (r, c) moved to (r-1, c-1)
    # the new first row and column reflect the image (no edge pixel repeated), as airbench pads
    np.testing.assert_array_equal(down_right[0], [11, 10, 11, 12])
    np.testing.assert_array_equal(down_right[:, 0], [11, 1, 11])
    np.testing.assert_array_equal(up_left[-1], [11, 12, 13, 12])
    assert shift(image, 1).shape == image.shape and shift(image, 1).flags.c_contiguous


@pytest.mark.parametrize(
    ("flip", "translate", "shifted"), [(False, False, 0), (True, False, 0), (False, True, 2), (True, True, 4)]
)
def test_the_views_weigh_one_in_total_and_the_shifted_ones_half(flip: bool, translate: bool, shifted: int) -> None:
    views = TestTimeViews.of(flip=flip, translate=translate)
    unshifted = 2 if flip else 1
    assert len(views.views) == len(views.weights) == unshifted + shifted and sum(views.weights) == 1.0
    assert views.plain == (not flip and not translate)
    assert sum(views.weights[unshifted:]) == (0.5 if translate else 0)


def test_level_two_is_airbenchs_average_of_flips_and_shifted_flips() -> None:
    """Each view's "output" is its pixels: the average must be airbench's 1/4 (image + mirror) + 1/8 (the image
    shifted either way, and the mirror of each shifted image)."""
    images = np.random.default_rng(0).integers(0, 256, (5, 6, 7, 3)).astype(np.uint8)
    views = TestTimeViews.of(flip=True, translate=True)
    averaged = views.average([view(images).astype(np.float64) for view in views.views])
    shifted = sum(v.astype(np.float64) for s in (1, -1) for v in (shift(images, s), mirror(shift(images, s))))
    expected = 0.25 * (images.astype(np.float64) + mirror(images)) + 0.125 * shifted
    np.testing.assert_allclose(averaged, expected)
    # the two flips alone: their plain mean
    flips = TestTimeViews.of(flip=True, translate=False)
    np.testing.assert_allclose(
        flips.average([v(images) * 1.0 for v in flips.views]), (images + 0.0 + mirror(images)) / 2
    )
