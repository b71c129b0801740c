"""What the agent knows of a runc container (``agent/runc/state.py``)."""

from __future__ import annotations

import os

from execbus.agent.procs import start_time
from execbus.agent.runc.state import KnownContainer


def test_a_known_container_lives_as_long_as_its_very_init_process() -> None:
    import subprocess
    import time

    child = subprocess.Popen(["sleep", "30"])
    try:
        known = KnownContainer.of({"pid": child.pid}, "/rootfs", {"args": ["sh"]})
        assert known is not None and known.alive()
        assert KnownContainer.of({"pid": 0}, "/", {}) is None
        assert KnownContainer.of({}, "/", {}) is None
        forged = KnownContainer(child.pid, "1", "/", {})  # same pid, another start time
        assert not forged.alive()
        child.kill()
        deadline = time.monotonic() + 5
        while start_time(child.pid, zombies=False) is not None:  # a zombie counts as gone
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not known.alive()
    finally:
        child.kill()
        child.wait()
    assert start_time(os.getpid(), zombies=False) is not None
