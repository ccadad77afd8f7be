"""The forward-pass pixel budget (small images keep the batch asked for, large ones get fewer per pass), and the
CPU description every figure is printed with."""

from __future__ import annotations

from embedlab.core.runtime import FORWARD_BATCH_PIXELS, cpu_description, forward_batch_size


def test_forward_batches_are_cut_to_the_pixel_budget() -> None:
    assert forward_batch_size(256, 32) == 256 and forward_batch_size(256, 64) == 256  # CIFAR-10, digits, 64 px
    assert forward_batch_size(256, 224) == FORWARD_BATCH_PIXELS // (224 * 224) == 20
    assert forward_batch_size(8, 224) == 8  # never more than asked
    assert forward_batch_size(256, 5000) == 1  # never none


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: Another CPU
flags\t\t: fpu sse2
"""


def test_the_cpu_is_named_by_its_family_and_model_and_its_kernel_flags() -> None:
    """Two CPUs sold under one model name with the same flags ran float32 matmuls 2x apart: the name must say which."""
    cpu = cpu_description(CPUINFO)
    assert cpu["cpu"] == "AMD EPYC (family 25, model 17)"  # the first processor's lines, not the last one's
    assert cpu["flags"] == ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]  # in KERNEL_FLAGS order
    assert cpu_description("model name\t: Some ARM core\n")["cpu"] == "Some ARM core"  # no family or model lines
    assert cpu_description("")["cpu"] == "unknown"
