"""Small, fast tests of parts that the end-to-end runs pass through without pinning down: image decoding (EXIF,
transparency, fit), the CIFAR-10 binary format checks, optimizers and weight decay, layer freezing, strategies,
mixed precision and weight files."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedlab.core.errors import UserError
from embedlab.core.params import TrainParams
from embedlab.data.download.cifar10 import CifarFormatError, parse_archive
from embedlab.data.images import decode, fit_to_square

from .conftest import make_cifar_archive


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


def _rewrite(src: Path, dest: Path, change: dict[str, bytes | None]) -> Path:
    """Copy a tar archive, replacing (bytes) or dropping (None) the named members."""
    with tarfile.open(src) as old, tarfile.open(dest, "w:gz") as new:
        for member in old.getmembers():
            data = old.extractfile(member).read() if member.isfile() else None
            if member.name in change:
                data = change[member.name]
                if data is None:
                    continue
                member.size = len(data)
            new.addfile(member, io.BytesIO(data) if data is not None else None)
    return dest


def test_cifar_format_errors_name_the_member(tmp_path: Path) -> None:
    archive = make_cifar_archive(tmp_path / "cifar.tar.gz").path
    batch = "cifar-10-batches-bin/data_batch_2.bin"
    with pytest.raises(CifarFormatError, match=r"missing cifar-10-batches-bin/data_batch_2\.bin"):
        parse_archive(_rewrite(archive, tmp_path / "missing.tar.gz", {batch: None}))
    with pytest.raises(CifarFormatError, match=r"data_batch_2.bin: 3000 bytes is not a whole number of 3073-byte"):
        parse_archive(_rewrite(archive, tmp_path / "short.tar.gz", {batch: b"\0" * 3000}))
    bad_label = bytes([10]) + bytes(3072)
    with pytest.raises(CifarFormatError, match="label 10 but only 10 classes"):
        parse_archive(_rewrite(archive, tmp_path / "label.tar.gz", {batch: bad_label}))
    assert issubclass(CifarFormatError, UserError)  # one line, no traceback


@pytest.mark.parametrize(
    ("optimizer", "decay", "cls", "expected"),
    [
        ("adam", 0.0, "Adam", None),
        ("adam", 0.01, "Adam", 0.01),
        ("adamw", 0.02, "AdamW", 0.02),
        ("sgd", 0.005, "SGD", 0.005),
        ("rmsprop", 0.001, "RMSprop", 0.001),
    ],
)
def test_each_optimizer_gets_the_weight_decay_asked_for(optimizer: str, decay: float, cls: str, expected) -> None:
    from embedlab.train.optimization import make_optimizer

    built = make_optimizer(TrainParams(optimizer=optimizer, weight_decay=decay, lr=0.01), 0.01, 100)
    assert type(built).__name__ == cls
    assert built.weight_decay == (pytest.approx(expected) if expected else None)
    if optimizer == "sgd":
        assert built.nesterov and built.momentum == pytest.approx(0.9)


def test_unfreeze_top_layers_and_keep_pretrained_batchnorm_frozen() -> None:
    import keras

    from embedlab.train.loop import _set_trainable

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Conv2D(4, 3, name="c2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    backbone = keras.Model(inputs, x)

    def trainable() -> list[str]:
        return [layer.name for layer in backbone.layers if layer.trainable]

    _set_trainable(backbone, 0, pretrained=True)  # warm-up: the whole backbone frozen
    assert trainable() == []
    _set_trainable(backbone, 2, pretrained=True)  # the top two layers, but a pretrained BatchNorm stays frozen
    assert trainable() == ["c2"]
    _set_trainable(backbone, "all", pretrained=False)  # from scratch: BatchNorm learns too
    assert {"c1", "bn1", "c2", "bn2"} <= set(trainable())


def test_multiworker_without_a_cluster_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from embedlab.models.devices import make_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UserError, match=r"train\.strategy=multiworker needs TF_CONFIG"):
        make_strategy("multiworker")


def test_mixed_precision_on_uses_bfloat16_on_cpu() -> None:
    import keras

    from embedlab.models.devices import set_mixed_precision

    try:
        assert set_mixed_precision("on") == "mixed_bfloat16"
        assert keras.mixed_precision.global_policy().compute_dtype == "bfloat16"
        assert set_mixed_precision("auto") == "float32"  # no GPU here
        assert set_mixed_precision("off") == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_a_missing_weights_file_is_one_line(tmp_path: Path) -> None:
    import keras

    from embedlab.models.backbones import load_weights

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(UserError, match=r"model.weights: .*nope.weights.h5 does not exist"):
        load_weights(model, str(tmp_path / "nope.weights.h5"))


def test_only_embedlab_logs_at_info_in_a_stage() -> None:
    """Stage output shows embedlab's own progress, not other libraries' INFO lines (faiss names its CPU build)."""
    script = (
        "import logging, numpy as np\n"
        "from embedlab.core.errors import run_main\n"
        "def main():\n"
        "    from embedlab.core.params import FaissParams\n"
        "    from embedlab.retrieval.index import FaissIndex\n"
        "    FaissIndex(np.eye(4, dtype='float32'), 'cosine', FaissParams(type='flat'))\n"
        "    logging.getLogger('embedlab.train.loop').info('our progress')\n"
        "    logging.getLogger('somelib').warning('a warning still shows')\n"
        "run_main(main)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "INFO embedlab.train.loop: our progress",
        "WARNING somelib: a warning still shows",
    ]
