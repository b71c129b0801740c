"""One managed child process: started in its own session with its output
appended to a log file, waited on, signalled, stopped, crashed and restarted."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from execbus.testing.processes.helpers import tail


class ProcessDied(RuntimeError):
    """A managed process exited when it should have been running."""


class Managed:
    """One child process: its command line, environment and log; restartable.

    ``cwd``: its working directory; ``user``/``group``: the uid and gid to run
    it as (default group: the user's primary group; no supplementary groups;
    root only).
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        user: int | None = None,
        group: int | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.user = user
        self.group = group
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        """Start it (again): a new session, stdin from /dev/null, output appended to the log."""
        credentials: dict[str, Any] = {}
        if self.user is not None:
            gid = self.group if self.group is not None else pwd.getpwuid(self.user).pw_gid
            credentials = {"user": self.user, "group": gid, "extra_groups": []}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                start_new_session=True,
                **credentials,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """Raise :class:`ProcessDied`, with the log's tail, if it exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ProcessDied(
                f"{self.name} exited with {self.proc.returncode}:\n{tail(self.log_path)}"
            )

    # -- its log -------------------------------------------------------------

    def log_text(self) -> str:
        """The whole log ("" if unreadable)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log(self, chars: int = 5000) -> str:
        """The end of the log (for assertion messages)."""
        return self.log_text()[-chars:]

    # -- waiting -------------------------------------------------------------

    def wait_for(self, condition: Callable[[], object], what: str, timeout: float) -> None:
        """Block until ``condition()`` holds; :class:`ProcessDied` if the process exits
        meanwhile, :class:`TimeoutError` (with the log's tail) after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not condition():
            self.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {what} after {timeout:g} s:\n{self.log()}")
            time.sleep(0.02)

    async def wait_for_async(
        self, condition: Callable[[], object], what: str, timeout: float
    ) -> None:
        """:meth:`wait_for` in a coroutine."""
        deadline = time.monotonic() + timeout
        while not condition():
            self.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {what} after {timeout:g} s:\n{self.log()}")
            await asyncio.sleep(0.05)

    # -- ending it -----------------------------------------------------------

    def signal(self, sig: int, group: bool = True) -> None:
        """Send ``sig`` to its process group (or to the process alone)."""
        if self.alive:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if group:
                    os.killpg(self.proc.pid, sig)
                else:
                    self.proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int | None:
        return None if self.proc is None else self.proc.wait(timeout)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM to the process alone; its exit status. One that does not exit within
        ``timeout`` gets SIGKILL, its whole group with it (then the status says so)."""
        assert self.proc is not None, f"{self.name} was never started"
        self.signal(signal.SIGTERM, group=False)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            return self.proc.wait()

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (the whole process group)."""
        if not self.alive:
            return
        self.signal(signal.SIGTERM)
        try:
            self.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill_group()

    def kill(self) -> None:
        """SIGKILL the process alone, as a crash would, and reap it (its children live on)."""
        self.signal(signal.SIGKILL, group=False)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def kill_group(self) -> None:
        """SIGKILL the process group and reap the process (whatever state it is in)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
