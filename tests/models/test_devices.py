"""Where TensorFlow computes: distribution strategies and the dtype policy."""

from __future__ import annotations

import pytest

from embedlab.core.errors import UserError


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
