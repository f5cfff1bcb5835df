"""Servers started by the browser test: each in its own session (process group), stopped as a group.

`dagster dev` spawns a webserver, a daemon and code servers, and runs are further subprocesses; all of
them stay in the group of the process started here, so signalling the group stops every one of them
(DESIGN.md: started from a script without job control, `dagster dev` would otherwise outlive the test).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A server started in a new session, with its output in a log file.

    Args:
        name: Label for messages.
        argv: Command line.
        env: Full environment of the process.
        cwd: Working directory.
        log_path: File that receives stdout and stderr.
        url: Base URL the server will answer on.
    """

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path, log_path: Path, url: str
    ) -> None:
        self.name, self.url, self.log_path = name, url, log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started = time.monotonic()

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the server's output, for failure messages."""
        self._log.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, message: str) -> None:
        """Fail the test with `message` and the tail of this server's log."""
        pytest.fail(f"{message}\n--- last lines of {self.name} ({self.log_path}) ---\n{self.log_tail()}", pytrace=False)

    def wait_until(self, what: str, probe: Callable[[], bool], timeout: float, interval: float = 1.0) -> float:
        """Call `probe` until it returns True; fail with the log tail on timeout or if the server exits.

        Returns:
            Seconds waited.
        """
        started = time.monotonic()
        while True:
            code = self.proc.poll()
            if code is not None:
                self.fail(f"{self.name} exited with code {code} while waiting for {what}")
            with contextlib.suppress(OSError, ValueError):
                if probe():
                    return time.monotonic() - started
            if time.monotonic() - started > timeout:
                self.fail(f"{self.name}: no {what} after {timeout:.0f} s")
            time.sleep(interval)

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM to the whole process group, then SIGKILL to what is left after `grace` seconds."""
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(pgid):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=0.5)
        if _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._log.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
