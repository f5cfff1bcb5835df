"""`Owner(host, pid, start)`: the one answer to "is the process that owns this still there"."""

from __future__ import annotations

import subprocess
import sys

from hnr_assets.lib.runtime.owner import HOST, Owner, process_start


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_this_process_is_alive_and_current() -> None:
    me = Owner.current()
    assert me.local and me.is_current and me.alive()
    assert me.start == process_start(me.pid) is not None


def test_a_finished_process_is_gone() -> None:
    assert not Owner(HOST, _dead_pid()).alive()


def test_a_reused_pid_is_not_the_owner() -> None:
    me = Owner.current()
    assert me.start is not None
    assert not Owner(HOST, me.pid, me.start + 1).alive()  # same pid, another start time
    assert Owner(HOST, me.pid, None).alive()  # start unknown: the pid alone decides


def test_another_host_cannot_be_judged_and_counts_as_alive() -> None:
    other = Owner("not-" + HOST, _dead_pid())
    assert not other.local and other.alive()


def test_tags_round_trip() -> None:
    me = Owner.current()
    assert Owner.from_tags(me.tags()) == me
    assert Owner.from_tags({"hnr/host": HOST, "hnr/pid": "12", "hnr/pid_start": ""}) == Owner(HOST, 12, None)
    assert Owner.from_tags({"hnr/host": HOST}) is None
    assert Owner.from_tags({"hnr/pid": "12"}) is None
    assert Owner.from_tags({"hnr/host": HOST, "hnr/pid": "0"}) is None
