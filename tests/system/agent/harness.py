"""Running real agent processes for the tests, and probes of their processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from execbus.testing import processes
from execbus.testing.agent_peer import AgentPeer
from execbus.testing.waiting import wait_until_sync
from tests.conftest import ROOT

SRC = ROOT / "src"
IS_ROOT = os.geteuid() == 0
READY_TIMEOUT = 15.0


class AgentProcess(processes.AgentProcess):
    """``python -m execbus.agent`` with JSON logs in a private temporary directory,
    ready once it logs ``agent ready`` (``execbus.testing.processes``'s agent)."""

    def __init__(
        self, args: list[str], *, user: int | None = None, python: str | None = None
    ) -> None:
        self.dir = tempfile.mkdtemp(prefix="eb-agent-")
        if user is not None:
            os.chown(self.dir, user, -1)
        # EXECBUS_TEST_AGENT_PYTHON runs the agents of the tests under another
        # interpreter, e.g. a python3.9 (the oldest the agent supports; docs/guest.md).
        python = python or os.environ.get("EXECBUS_TEST_AGENT_PYTHON") or sys.executable
        workdir = Path(self.dir)
        env = processes.child_env(PYTHONPATH=str(SRC))
        super().__init__(
            "agent", workdir, env, *args, json_logs=True, python=python, cwd=ROOT, user=user
        )
        self.args = args

    @property
    def socket(self) -> str:
        return str(self.sock)

    def start(self) -> AgentProcess:
        super().start()
        self.wait_ready(READY_TIMEOUT)
        return self

    async def connect(self, **kw: Any) -> AgentPeer:
        return await AgentPeer.unix(self.socket, **kw)

    def lifeline(self, timeout: float = 5.0) -> int:
        """The pid of the agent's lifeline process (started with its first exec)."""
        return wait_until_sync(
            lambda: lifeline_of(self.pid), timeout, what=f"the lifeline of agent {self.pid}"
        )

    def cleanup(self) -> None:
        self.kill_group()
        shutil.rmtree(self.dir, ignore_errors=True)


def rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS) in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def live_members(pgid: int) -> list[int]:
    """Pids of the group's processes that are not zombies."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
    """Assert that no process of the group remains.

    Every member must be dead at once (no live process). Killed orphans are
    zombies until PID 1 reaps them, which a lazy init (this sandbox's reaps
    about once a second) delays, so ``killpg(pgid, 0)`` is polled until it
    raises ProcessLookupError.
    """
    deadline = time.monotonic() + 2.0
    while live_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not live_members(pgid), f"group {pgid} still has live processes"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process group {pgid} still exists")


def lifeline_of(agent_pid: int) -> int | None:
    """The lifeline child of an agent process, if it runs."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == agent_pid and b"guard_main" in cmdline:
            return int(entry)
    return None


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat of a live (non-zombie) process, else None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def is_running(pid: int, started: str | None) -> bool:
    """True while that very process (pid and start time) runs (zombies do not)."""
    return started is not None and start_time(pid) == started


def wait_process_gone(pid: int, started: str | None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while is_running(pid, started):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still runs")
        time.sleep(0.01)


def wait_for_file(path: str, timeout: float = 10.0) -> str:
    """The contents of ``path`` once it exists and is not empty."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            if text.endswith("\n"):
                return text
        time.sleep(0.01)
    raise AssertionError(f"{path} was not written")


requires_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (user switching)")

# A plain interpreter without the project's virtualenv, like a minimal guest's.
GUEST_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable


AgentFactory = Callable[..., AgentProcess]
