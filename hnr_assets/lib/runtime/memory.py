"""Resident memory of this process, and handing freed heap back to the OS (Linux; no-ops elsewhere).

`make demo` materializes every partition in one process; after an `encoders` step glibc keeps ~2.8 GiB
of freed activations (measured with the `local` profile), which later steps would sit on. The demo
trims after every step and logs what it holds; the training benchmark uses the same helpers to give
each variant its own peak.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import resource
from pathlib import Path

STATUS = Path("/proc/self/status")


def status_mib(field: str = "VmRSS") -> float | None:
    """A memory field of /proc/self/status in MiB (`VmRSS` now, `VmHWM` peak), or None off Linux."""
    try:
        with STATUS.open(encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_mib() -> float:
    """Peak resident memory so far, in MiB: of this process or of its largest finished child (a JVM,
    a generation worker), whichever is larger (`getrusage` `ru_maxrss`, KiB on Linux)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def release_free_memory() -> bool:
    """Collect garbage, then return the free heap glibc keeps to the OS (`malloc_trim`).

    Returns:
        Whether `malloc_trim` was called (False where the C library is not glibc: musl, macOS).
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, looked up once per process (`find_library` runs `ldconfig`), or None."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(name).malloc_trim
    return None


def reset_peak() -> bool:
    """Reset this process's peak resident memory (`VmHWM`) to the current one; False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return False
    return True
