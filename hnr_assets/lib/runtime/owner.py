"""The process that owns something: a temporary being written, an MLflow run, a demo's Dagster run.

A killed process cannot clean up after itself; whoever comes next asks whether the owner is still
there. `Owner(host, pid, start)` names it: the host, the process id and the process's start time (clock
ticks since boot, from `/proc/<pid>/stat`), so that a pid reused by a later process does not pass for
the owner. One definition serves the atomic writers (`lib.runtime.io`), MLflow (its run tags), the demo
(its Dagster run tags) and training (closing runs a killed process left RUNNING).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

HOST = socket.gethostname()
# The tags that carry an owner on MLflow runs and on the demo's Dagster runs.
TAG_HOST = "hnr/host"
TAG_PID = "hnr/pid"
TAG_PID_START = "hnr/pid_start"


def process_start(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (`/proc/<pid>/stat`), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Owner:
    """A process on a host.

    Attributes:
        host: Host name (`socket.gethostname()`).
        pid: Process id on that host.
        start: The process's start time in clock ticks since boot; None when unknown (no procfs, or
            recorded by a writer that did not know it).
    """

    host: str
    pid: int
    start: int | None = None

    @classmethod
    def current(cls) -> Owner:
        """This process."""
        pid = os.getpid()
        return cls(HOST, pid, process_start(pid))

    @property
    def local(self) -> bool:
        """Whether the owner runs on this host (only then can it be checked)."""
        return self.host == HOST

    @property
    def is_current(self) -> bool:
        """Whether the owner is this very process."""
        return self.local and self.pid == os.getpid()

    def alive(self) -> bool:
        """Whether the owner may still be running: its pid exists and, where both start times are known,
        is the same process. An owner on another host cannot be checked and counts as alive."""
        if not self.local:
            return True
        if not pid_alive(self.pid):
            return False
        if self.start is None:
            return True
        found = process_start(self.pid)
        return found is None or found == self.start

    def tags(self) -> dict[str, str]:
        """The owner as run tags (`hnr/host`, `hnr/pid`, `hnr/pid_start`; the start is "" when unknown)."""
        return {
            TAG_HOST: self.host,
            TAG_PID: str(self.pid),
            TAG_PID_START: "" if self.start is None else str(self.start),
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Owner | None:
        """The owner recorded in run tags, or None when they name no host and pid."""
        host, pid, start = tags.get(TAG_HOST), tags.get(TAG_PID, ""), tags.get(TAG_PID_START, "")
        if not host or not pid.isdigit() or int(pid) == 0:
            return None
        return cls(host, int(pid), int(start) if start.isdigit() else None)
