"""The int8 format follows the provider and the CPU: U8S8 QDQ on x86-64 (reduced range without VNNI),
S8S8 on ARM and TensorRT, and a provider without int8 kernels refused."""

from __future__ import annotations

import pytest

from tensorfold.errors import TensorfoldError
from tensorfold.quantize.formats import cpu_flags, format_for, has_vnni


def test_x86_with_vnni_takes_u8s8_full_range():
    fmt = format_for("cpu", "x86_64", {"avx2", "avx512f", "avx512_vnni"})
    assert (fmt.activations, fmt.weights, fmt.per_channel, fmt.reduce_range) == ("uint8", "int8", True, False)


def test_x86_without_vnni_reduces_the_range():
    fmt = format_for("cpu", "x86_64", {"avx2", "fma"})
    assert fmt.activations == "uint8" and fmt.reduce_range


def test_arm_and_tensorrt_take_symmetric_int8():
    assert format_for("cpu", "aarch64", set()).activations == "int8"
    assert format_for("tensorrt", "x86_64", set()).activations == "int8"


@pytest.mark.parametrize("provider", ["cuda", "webgpu", "coreml"])
def test_a_provider_without_int8_kernels_is_refused(provider):
    with pytest.raises(TensorfoldError, match="no int8 kernels"):
        format_for(provider)


def test_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_vnni\n")
    assert has_vnni(cpu_flags(str(info)))
    assert cpu_flags(str(tmp_path / "missing")) == set()
