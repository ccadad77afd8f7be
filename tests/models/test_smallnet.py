"""airbench's training choices as params: alternating flip, whole-pixel shifts, BatchNorm without a learned scale
and with faster shifts, Nesterov momentum, and lookahead; each checked against a hand computation."""

from __future__ import annotations

import re

import numpy as np
import pytest

from embedlab.core.params import ModelParams, ParamsError, parse_params
from embedlab.models.smallnet import patch_whitening_kernel, whiten_stem


def test_smallnet_without_batchnorm_scale_has_shifts_only() -> None:
    import keras

    from embedlab.models.backbones import build_models

    for bn_scale in (True, False):
        models = build_models("smallnet", 32, 10, ModelParams(bn_scale=bn_scale), seed=0)
        norms = [lay for lay in models.backbone.layers if isinstance(lay, keras.layers.BatchNormalization)]
        assert len(norms) == 6 and all(lay.scale is bn_scale and lay.center for lay in norms)


def test_widths_set_each_block_and_the_embedding_without_a_projection() -> None:
    """``backbones.smallnet.widths`` reaches the built network: each block's convolutions have its width, and with
    ``embedding_dim: null`` the embedding is as wide as the last block."""
    from embedlab.models.backbones import build_models

    params = parse_params({"model": {"embedding_dim": None}, "backbones": {"smallnet": {"widths": [16, 24, 40]}}})
    model_params, _ = params.for_backbone("smallnet")
    models = build_models("smallnet", 32, 10, model_params, seed=0)
    for block, width in enumerate((16, 24, 40), start=1):
        for conv in ("conv1", "conv2"):
            assert models.backbone.get_layer(f"block{block}_{conv}").filters == width
    assert models.embedding.output_shape == (None, 40)


def _correlated_images(count: int = 200, side: int = 12, seed: int = 0) -> np.ndarray:
    """Smooth, channel-correlated images: their 2×2 patches are far from white."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(count, side + 1, side + 1, 1))
    smooth = (base[:, 1:, 1:] + base[:, :-1, 1:] + base[:, 1:, :-1] + base[:, :-1, :-1]) / 4
    colour = smooth * np.array([1.0, 0.8, 0.5]) + 0.1 * rng.normal(size=(count, side, side, 3))
    return colour.astype(np.float32)


def _patches(pixels: np.ndarray) -> np.ndarray:
    windows = np.lib.stride_tricks.sliding_window_view(pixels, (2, 2), axis=(1, 2))
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, 12).astype(np.float64)


def test_the_kernel_whitens_the_patches_in_both_signs() -> None:
    pixels = _correlated_images()
    kernel = patch_whitening_kernel(pixels, eps=1e-9)
    assert kernel.shape == (2, 2, 3, 24)
    patches = _patches(pixels)
    outputs = (patches - patches.mean(0)) @ kernel.reshape(12, 24).astype(np.float64)
    covariance = np.cov(outputs[:, :12], rowvar=False, bias=True)
    np.testing.assert_allclose(covariance, np.eye(12), atol=1e-4)  # decorrelated, unit variance
    np.testing.assert_allclose(outputs[:, 12:], -outputs[:, :12])  # the second half is the first negated
    raw = np.cov(patches, rowvar=False)
    assert np.abs(raw - np.diag(np.diag(raw))).max() > 0.1  # the input was far from white


def test_whiten_stem_sets_the_kernel_from_what_the_stem_sees() -> None:
    from embedlab.models.backbones import build_models

    images = np.random.default_rng(1).integers(0, 256, size=(40, 16, 16, 3), dtype=np.uint8)
    models = build_models("smallnet", 16, 3, ModelParams(embedding_dim=8), seed=0)
    whiten_stem(models.embedding, models.backbone, images, seed=0)
    stem = models.backbone.get_layer("stem_conv")
    expected = patch_whitening_kernel(images.astype(np.float32) / 127.5 - 1.0)  # smallnet's preprocessing
    np.testing.assert_allclose(np.asarray(stem.kernel), expected, rtol=1e-4, atol=1e-4)
    assert not np.asarray(stem.bias).any()


def test_identity_init_passes_each_block_input_through_its_first_filters() -> None:
    from embedlab.models.backbones import build_models
    from embedlab.models.smallnet import identity_init

    models = build_models("smallnet", 16, 3, ModelParams(embedding_dim=8), seed=0)
    identity_init(models.backbone)
    rng = np.random.default_rng(2)
    for name in ("block1_conv1", "block2_conv1", "block3_conv2"):  # 24 -> 64, 64 -> 256, 256 -> 256
        conv = models.backbone.get_layer(name)
        kernel = np.asarray(conv.kernel)
        channels_in, channels_out = kernel.shape[2:]
        x = rng.normal(size=(1, 6, 6, channels_in)).astype(np.float32)
        y = np.asarray(conv(x))
        np.testing.assert_allclose(y[..., :channels_in], x, atol=1e-6)  # identity on the first filters
        if channels_out > channels_in:  # the rest keep their random init
            assert np.abs(kernel[..., channels_in:]).std() > 0.01


@pytest.mark.parametrize(
    ("raw", "start"),
    [
        ({"model": {"whiten_stem": True}}, "params.yaml: model.whiten_stem: densenet121 has no whitening stem"),
        ({"backbones": {"vgg16": {"whiten_stem": True}}}, "params.yaml: backbones.vgg16.whiten_stem: vgg16 has no"),
        ({"model": {"identity_init": True}}, "params.yaml: model.identity_init: densenet121 has no identity-init"),
        ({"backbones": {"vgg16": {"identity_init": True}}}, "params.yaml: backbones.vgg16.identity_init: vgg16 "),
        ({"backbones": {"vgg16": {"widths": [8, 8, 8]}}}, "params.yaml: backbones.vgg16.widths: vgg16 has no block"),
        ({"backbones": {"smallnet": {"widths": [64, 256]}}}, "params.yaml: backbones.smallnet.widths: "),
        ({"backbones": {"smallnet": {"widths": [64, 256, 4]}}}, "params.yaml: backbones.smallnet.widths.2: "),
    ],
)
def test_a_smallnet_init_on_another_backbone_is_one_line_naming_the_key(raw: dict, start: str) -> None:
    with pytest.raises(ParamsError, match="^" + re.escape(start)) as caught:
        parse_params(raw)
    assert "\n" not in str(caught.value)
    parse_params({"backbones": {"smallnet": {"whiten_stem": True, "identity_init": True}}})  # where they belong
