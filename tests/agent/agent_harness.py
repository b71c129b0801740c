"""Running real agent processes for the tests, and probes of their processes."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from execbus.testing.agent_peer import AgentPeer

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
IS_ROOT = os.geteuid() == 0
READY_TIMEOUT = 15.0


class AgentProcess:
    """``python -m execbus.agent`` in a private temporary directory."""

    def __init__(
        self, args: list[str], *, user: int | None = None, python: str | None = None
    ) -> None:
        self.dir = tempfile.mkdtemp(prefix="eb-agent-")
        if user is not None:
            os.chown(self.dir, user, -1)
        self.socket = os.path.join(self.dir, "agent.sock")
        self.log_path = os.path.join(self.dir, "agent.log")
        self.args = ["--listen", f"unix://{self.socket}", "--log-format", "json", *args]
        self.user = user
        # EXECBUS_TEST_AGENT_PYTHON runs the agents of the tests under another
        # interpreter, e.g. a python3.9 (the oldest the agent supports; docs/guest.md).
        self.python = python or os.environ.get("EXECBUS_TEST_AGENT_PYTHON") or sys.executable
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [self.python, "-m", "execbus.agent", *self.args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                cwd=str(ROOT),
                start_new_session=True,
                **self._credentials(),
            )
        self._wait_ready()
        return self

    def _credentials(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        gid = pwd.getpwuid(self.user).pw_gid
        return {"user": self.user, "group": gid, "extra_groups": []}

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.ready_line() is not None:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}: {self.log_text()}")
            time.sleep(0.01)
        raise RuntimeError(f"agent did not get ready: {self.log_text()}")

    def log_text(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    def ready_line(self) -> dict[str, Any] | None:
        return next((e for e in self.log_lines() if e.get("msg") == "agent ready"), None)

    @property
    def addresses(self) -> list[str]:
        """The listener addresses of the "agent ready" log line."""
        ready = self.ready_line()
        assert ready is not None
        return list(ready["listen"])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def connect(self, **kw: Any) -> AgentPeer:
        return await AgentPeer.unix(self.socket, **kw)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait; SIGKILL the whole group if it does not stop."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL the agent alone (not its process group), as a crash would."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def lifeline(self, timeout: float = 5.0) -> int:
        """The pid of the agent's lifeline process (started with its first exec)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = lifeline_of(self.pid)
            if found is not None:
                return found
            time.sleep(0.01)
        raise AssertionError(f"agent {self.pid} has no lifeline")

    def cleanup(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
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
