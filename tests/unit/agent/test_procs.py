"""The start time of the agent's own children, read after the spawn."""

from __future__ import annotations

import os
import subprocess

from execbus.agent.procs import child_start_time, start_time


def test_a_child_is_known_by_its_start_time_until_it_is_reaped() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert child_start_time(child.pid) == start_time(child.pid) is not None
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # a zombie, not reaped
        assert child_start_time(child.pid) == start_time(child.pid) is not None
    finally:
        child.kill()
        child.wait()
    assert child_start_time(child.pid) is None, "reaped: the pid may be another's"


def test_a_process_that_is_not_a_child_has_none() -> None:
    assert start_time(1) is not None
    assert child_start_time(1) is None
