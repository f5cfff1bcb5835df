"""Child processes that do not outlive the process that started them.

A JVM started with `subprocess.run` keeps running when its Python parent is killed (SIGKILL, the OOM
killer, a Dagster run terminated): it goes on indexing into a temporary folder that nobody will ever
rename, holding its heap. On Linux the kernel can send the child a signal when its parent dies
(`prctl(PR_SET_PDEATHSIG)`); elsewhere the child is left as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess` that makes the child receive `sig` when this process dies.

    Returns:
        The function, or None where the platform has no such mechanism (not Linux, no libc found).
    """
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    prctl = ctypes.CDLL(name, use_errno=True).prctl  # resolved here, before the fork
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(1)

    return preexec
