"""Device and precision, as dense encoding, training, the cross-encoder and generation resolve them."""

from __future__ import annotations

from pathlib import Path

import pytest

from hnr_assets.lib.runtime import precision
from hnr_assets.lib.runtime.errors import ConfigError
from hnr_assets.lib.runtime.precision import cpu_has_native_bf16, resolve_precision


def test_precision_resolution(tmp_path: Path) -> None:
    assert resolve_precision("auto", "cpu", bf16_cpu=True) == "bf16"
    assert resolve_precision("auto", "cpu", bf16_cpu=False) == "fp32"
    assert resolve_precision("auto", "cuda", bf16_gpu=True) == "bf16"
    assert resolve_precision("auto", "cuda", bf16_gpu=False) == "fp16"
    assert resolve_precision("fp32", "cuda") == "fp32"
    with pytest.raises(ConfigError, match="fp16 mixed precision needs a GPU"):
        resolve_precision("fp16", "cpu")
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2\n")
    assert not cpu_has_native_bf16(info)
    assert not cpu_has_native_bf16(tmp_path / "missing")


def test_auto_on_a_cpu_times_bf16_against_fp32() -> None:
    # Flags alone are not enough: an Intel Xeon showing avx512_bf16 (AMX hidden) ran bf16 1.6-1.9x slower.
    calls = []

    def timer(seconds):
        return lambda bf16: calls.append(bf16) or seconds[bf16]

    assert not precision.bf16_pays_off(False, timer({False: 1.0, True: 0.1}))
    assert calls == []  # no native bf16: no timing at all
    assert precision.bf16_pays_off(True, timer({False: 1.0, True: 0.5}))
    assert not precision.bf16_pays_off(True, timer({False: 1.0, True: 1.6}))
    assert not precision.bf16_pays_off(True, timer({False: 1.0, True: 0.95}))  # within the noise margin
    # The real timing runs and returns positive seconds for both.
    assert precision.time_matmul_step(False, repeats=1) > 0 and precision.time_matmul_step(True, repeats=1) > 0


def test_dense_encoding_precision() -> None:
    assert precision.resolve_precision("fp32", "cpu") == "fp32"
    assert precision.resolve_precision("auto", "cpu") == ("bf16" if precision.cpu_bf16_is_faster() else "fp32")
