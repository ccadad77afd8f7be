"""Decoding any image Pillow reads into RGB, and making it square: by pixel value."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from embedlab.data.images import decode, fit_to_square


def _jpeg_with_orientation(orientation: int) -> bytes:
    """A 40×20 JPEG, left half red and right half blue, with an EXIF orientation tag."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", exif=exif.tobytes(), quality=95)
    return out.getvalue()


def test_exif_orientation_is_applied() -> None:
    upright = decode(_jpeg_with_orientation(1))
    assert upright.size == (40, 20)
    rotated = decode(_jpeg_with_orientation(6))  # "rotate 90° clockwise to display"
    assert rotated.size == (20, 40)
    top, bottom = np.asarray(rotated)[2, 10], np.asarray(rotated)[-3, 10]
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # red on top, blue below: turned clockwise


def test_transparency_is_composited_on_white() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent on the left half
    rgba[:, 2:, 3] = 255
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, "PNG")
    pixels = np.asarray(decode(out.getvalue()))
    assert (pixels[:, :2] == 255).all() and (pixels[:, 2:] == (255, 0, 0)).all()


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_a_transparency_colour_key_is_composited_on_white(mode: str) -> None:
    """PNG's tRNS chunk on a grey or RGB image marks one colour transparent: those pixels become white."""
    pixels = np.zeros((2, 2, 3), np.uint8)
    pixels[0, 0] = pixels[1, 1] = (10, 10, 10)  # the transparent key
    pixels[0, 1] = pixels[1, 0] = (200, 200, 200)
    image = Image.fromarray(pixels).convert(mode)
    key = (10, 10, 10) if mode == "RGB" else 10
    out = io.BytesIO()
    image.save(out, "PNG", transparency=key)
    decoded = np.asarray(decode(out.getvalue()))
    np.testing.assert_array_equal(decoded[[0, 1], [0, 1]], [[255, 255, 255]] * 2)
    np.testing.assert_array_equal(decoded[[0, 1], [1, 0]], [[200, 200, 200]] * 2)


def test_fit_crop_pad_and_stretch() -> None:
    """By pixel value: red rises 8 per column, green 25 per row, so a crop or pad off centre shows."""
    pixels = np.zeros((10, 30, 3), np.uint8)
    pixels[..., 0] = np.arange(30)[None, :] * 8
    pixels[..., 1] = np.arange(10)[:, None] * 25
    pixels[..., 2] = 255
    wide = Image.fromarray(pixels)
    rows = np.arange(10)[:, None] * 25 * np.ones((1, 10), int)
    crop = fit_to_square(wide, 10, "crop")  # the middle 10 columns, untouched
    np.testing.assert_array_equal(crop[..., 0], np.ones((10, 1), int) * np.arange(10, 20)[None, :] * 8)
    np.testing.assert_array_equal(crop[..., 1], rows)
    stretch = fit_to_square(wide, 10, "stretch")  # every column, three to one; rows untouched
    np.testing.assert_allclose(stretch[..., 0], np.ones((10, 1)) * (8 * (3 * np.arange(10) + 1))[None, :], atol=2)
    np.testing.assert_array_equal(stretch[..., 1], rows)
    pad = fit_to_square(wide, 10, "pad")  # the whole image, 10 x 3.3 rows, between black bars of equal height
    content = np.flatnonzero(pad[:, 5, 2])
    assert list(content) == list(range(content[0], content[-1] + 1)) and len(content) == 3
    assert (
        abs(content[0] - (9 - content[-1])) <= 1
        and (pad[: content[0]] == 0).all()
        and (pad[content[-1] + 1 :] == 0).all()
    )
    np.testing.assert_allclose(pad[content[1], :, 0], stretch[0, :, 0], atol=2)
    assert fit_to_square(wide, 16, "crop").shape == fit_to_square(wide, 16, "pad").shape == (16, 16, 3)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def test_every_mode_decodes_to_its_rgb_pixels() -> None:
    """Grey, palette, CMYK and 16-bit files become the RGB pixels they show, not a flat or shifted copy."""
    grey = np.array([[0, 60], [130, 255]], np.uint8)
    np.testing.assert_array_equal(
        np.asarray(decode(_encoded(Image.fromarray(grey, "L"), "PNG"))), grey[..., None] * [1, 1, 1]
    )
    colours = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [250, 200, 10]]], np.uint8)
    palette = Image.fromarray(colours).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    for fmt in ("PNG", "GIF"):
        np.testing.assert_array_equal(np.asarray(decode(_encoded(palette, fmt))), colours)
    cmyk = Image.frombytes("CMYK", (3, 1), bytes([0, 255, 255, 0, 0, 0, 0, 255, 0, 0, 0, 0]))  # red, black, white
    np.testing.assert_array_equal(
        np.asarray(decode(_encoded(cmyk, "TIFF"))), [[[255, 0, 0], [0, 0, 0], [255, 255, 255]]]
    )
    # 16-bit grey: its own min..max stretched to 0..255, (v - 10) / 245 here
    deep = Image.fromarray(np.array([[257 * 10, 257 * 110], [65535, 257 * 17]], np.uint16))
    assert deep.mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(decode(_encoded(deep, "PNG")))[..., 0], [[0, 104], [255, 7]])
