"""Small, fast tests of parts that the end-to-end runs pass through without pinning down: image decoding (EXIF,
transparency, fit), the CIFAR-10 binary format checks, optimizers and weight decay, layer freezing, strategies,
mixed precision and weight files."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedlab.data.cifar10 import CifarFormatError, parse_archive
from embedlab.errors import UserError
from embedlab.images import decode, fit_to_square
from embedlab.params import TrainParams

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


def test_fit_crop_pad_and_stretch() -> None:
    wide = Image.fromarray(np.full((10, 30, 3), 200, np.uint8))
    for fit in ("crop", "pad", "stretch"):
        assert fit_to_square(wide, 16, fit).shape == (16, 16, 3)
    padded = fit_to_square(wide, 15, "pad")
    assert (padded[0] == 0).all() and (padded[-1] == 0).all() and (padded[7] > 150).all()  # black bars top and bottom
    assert (fit_to_square(wide, 15, "crop") > 150).all() and (fit_to_square(wide, 15, "stretch") > 150).all()


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
    from embedlab.optimization import make_optimizer

    built = make_optimizer(TrainParams(optimizer=optimizer, weight_decay=decay, lr=0.01), 0.01, 100)
    assert type(built).__name__ == cls
    assert built.weight_decay == (pytest.approx(expected) if expected else None)
    if optimizer == "sgd":
        assert built.nesterov and built.momentum == pytest.approx(0.9)


def test_unfreeze_top_layers_and_keep_pretrained_batchnorm_frozen() -> None:
    import keras

    from embedlab.training import _set_trainable

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
    from embedlab.devices import make_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UserError, match=r"train\.strategy=multiworker needs TF_CONFIG"):
        make_strategy("multiworker")


def test_mixed_precision_on_uses_bfloat16_on_cpu() -> None:
    import keras

    from embedlab.devices import set_mixed_precision

    try:
        assert set_mixed_precision("on") == "mixed_bfloat16"
        assert keras.mixed_precision.global_policy().compute_dtype == "bfloat16"
        assert set_mixed_precision("auto") == "float32"  # no GPU here
        assert set_mixed_precision("off") == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_a_missing_weights_file_is_one_line(tmp_path: Path) -> None:
    import keras

    from embedlab.models import load_weights

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(UserError, match=r"model.weights: .*nope.weights.h5 does not exist"):
        load_weights(model, str(tmp_path / "nope.weights.h5"))
