"""Image decoding and resizing shared by the pipeline and the ``search`` command.

Any file Pillow reads, in any mode (1, L, P, RGBA, CMYK, I;16, ...), becomes 8-bit RGB; EXIF orientation is
applied so photos are upright; transparency is composited on white. Resizing uses Pillow's BICUBIC filter, which
is antialiased when shrinking (Pillow widens the filter support by the scale factor), so no aliasing on photos.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from embedlab.core.errors import UserError

Fit = Literal["crop", "pad", "stretch"]
RESAMPLE = Image.Resampling.BICUBIC


class ImageDecodeError(UserError):
    """The bytes are not an image Pillow can decode."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency on white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.round().astype(np.uint8), "L")
    if image.mode == "P" or (image.mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")  # a palette's or a PNG tRNS colour key's transparency becomes alpha
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def decode(data: bytes) -> Image.Image:
    """Decode image bytes fully (so truncated files fail here, not later) and return RGB."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(f"{type(err).__name__}: {err}") from err


def open_rgb(path: str) -> Image.Image:
    """Read an image file from disk as RGB; raise :class:`ImageDecodeError` with the reason if it cannot."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise ImageDecodeError(f"cannot read {path}: {err.strerror or err}") from err
    try:
        return decode(data)
    except ImageDecodeError as err:
        raise ImageDecodeError(f"{path} is not a readable image ({err})") from err


def fit_to_square(image: Image.Image, size: int, fit: Fit = "crop") -> np.ndarray:
    """Resize to ``size``×``size`` RGB uint8: ``crop`` centre-crops, ``pad`` letterboxes, ``stretch`` squashes."""
    if image.size == (size, size):
        return np.asarray(image, dtype=np.uint8)
    match fit:
        case "stretch":
            out = image.resize((size, size), RESAMPLE)
        case "crop":
            out = ImageOps.fit(image, (size, size), RESAMPLE)
        case "pad":
            out = ImageOps.pad(image, (size, size), RESAMPLE, color=(0, 0, 0))
        case other:
            raise ValueError(f"unknown data.fit {other!r}")
    return np.asarray(out, dtype=np.uint8)
