"""Memory helpers of `make demo` and the benchmarks, on this process's real heap (Linux, glibc)."""

from __future__ import annotations

import ctypes.util
import gc
import sys

import pytest

from hnr_assets.lib.runtime.memory import peak_mib, release_free_memory, reset_peak, status_mib

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or "libc.so" not in (ctypes.util.find_library("c") or ""),
    reason="/proc and glibc's malloc_trim",
)


def test_freed_heap_goes_back_to_the_os_and_the_peak_resets():
    release_free_memory()
    base = status_mib("VmRSS")
    # 300 MiB in 64 KiB blocks: below glibc's mmap threshold, so they live on the heap; a block
    # allocated after them pins the top of the heap, so glibc cannot shrink it on `free` and keeps
    # the 300 MiB mapped until trimmed (what happens to a training step's activations).
    blocks = [bytearray(64 * 1024) for _ in range(4800)]
    pin = bytearray(64 * 1024)
    held = status_mib("VmRSS")
    assert held - base > 250, (base, held)
    del blocks
    gc.collect()
    assert status_mib("VmRSS") - base > 250  # freed, still resident

    assert release_free_memory() is True
    trimmed = status_mib("VmRSS")
    assert trimmed - base < 100, (base, held, trimmed)

    peak = status_mib("VmHWM")
    assert peak - base > 250, (base, peak)  # VmHWM is kept per page-table update, not exactly RSS
    assert reset_peak() is True
    assert status_mib("VmHWM") < peak - 200
    del pin


def test_peak_covers_what_is_resident():
    resident = status_mib("VmRSS")
    assert resident > 0 and peak_mib() >= resident - 5  # both from the kernel's high-water mark


def test_unknown_field_is_none():
    assert status_mib("NoSuchField") is None
