"""One exec: a process the agent started, its output, and how it ended."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable
from typing import Any, Protocol

from execbus.agent.errors import (
    NOT_RUNNING,
    NOT_TTY,
    STDIN_CLOSED,
    AgentError,
    StartFailure,
)
from execbus.agent.execspec import ExecSpec
from execbus.agent.output import Capture, ChunkSink, OutputPump
from execbus.agent.signames import signal_name
from execbus.agent.spawn import Launched, set_winsize
from execbus.agent.stdin import StdinWriter
from execbus.agent.tracking import ProcessSet

log = logging.getLogger(__name__)

# After the main process is reaped, how long to wait for its output pipes to
# reach end of file. A background grandchild that inherited them may keep
# them open forever; its output after this window is not captured.
DRAIN_WINDOW = 0.1

RUNNING, EXITED, FAILED = "running", "exited", "failed"


class ExecSink(Protocol):
    """Where an exec reports its output chunks and its end (the supervisor)."""

    def output(self, exe: Exec, stream: str, seq: int, data: bytes) -> Awaitable[object] | None: ...

    def finished(self, exe: Exec) -> None: ...


class Exec:
    """The life of one exec from spawn to exit; driven by event-loop callbacks."""

    def __init__(self, spec: ExecSpec, sink: ExecSink) -> None:
        self.spec = spec
        self.exec_id = spec.exec_id
        self.state = RUNNING
        self.pid: int | None = None
        self.started_at = time.time()
        self.finished_at: float | None = None
        self.exit: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.finished = asyncio.get_running_loop().create_future()
        self._sink = sink
        self._captures = {
            "stdout": Capture(spec.output_limit, discard=not spec.attach_stdout),
            "stderr": Capture(spec.output_limit, discard=not spec.attach_stderr),
        }
        self._launched: Launched | None = None
        self._pumps: list[OutputPump] = []
        self._stdin: StdinWriter | None = None
        self._status: tuple[int, int | None] | None = None
        self._timed_out = False
        self._timers: list[asyncio.TimerHandle] = []
        # Every process the exec started (kept by the supervisor's tracker
        # after the exit too), and when its timeout runs out (a loop time).
        self.procs: ProcessSet | None = None
        self.deadline: float | None = None

    # -- lifecycle -------------------------------------------------------

    def attach(self, launched: Launched, procs: ProcessSet) -> None:
        """Take over a spawned process: read its output, arm its timeout."""
        loop = asyncio.get_running_loop()
        self._launched, self.pid, self.procs = launched, launched.pid, procs
        stdio = launched.stdio
        streams = [("stdout", stdio.stdout), ("stderr", stdio.stderr)]
        self._pumps = [
            OutputPump(fd, name, self._captures[name], self._sink_for(name), self._on_eof)
            for name, fd in streams
            if fd is not None
        ]
        if stdio.stdin is not None:
            self._stdin = StdinWriter(stdio.stdin, tty=self.spec.tty)
        for pump in self._pumps:
            pump.start()
        if self.spec.timeout:
            self.deadline = loop.time() + self.spec.timeout
            self._timers.append(loop.call_at(self.deadline, self._on_timeout))
        launched.exited.add_done_callback(self._on_exited)

    def fail(self, failure: StartFailure) -> None:
        """The process could not be spawned."""
        self.state = FAILED
        self.error = failure.to_wire()
        self._end()

    def _sink_for(self, stream: str) -> ChunkSink | None:
        if self.spec.stream_output and not self._captures[stream].discard:
            return self._output
        return None

    def _output(self, stream: str, seq: int, data: bytes) -> Awaitable[object] | None:
        return self._sink.output(self, stream, seq, data)

    def _on_exited(self, fut: asyncio.Future[int | None]) -> None:
        assert self._launched is not None
        self._status = self._launched.decode(fut.result())
        if all(p.eof for p in self._pumps):
            self._finish()
        else:
            loop = asyncio.get_running_loop()
            self._timers.append(loop.call_later(DRAIN_WINDOW, self._on_drain_window))

    def _on_eof(self) -> None:
        if self._status is not None and all(p.eof for p in self._pumps):
            self._finish()

    def _on_drain_window(self) -> None:
        log.debug("output still open after exit, draining", extra={"exec_id": self.exec_id})
        for pump in self._pumps:
            pump.drain_now()
        self._finish()

    def _on_timeout(self) -> None:
        if self._status is None:  # not a straggler after a normal exit
            self._timed_out = True
            log.info("exec timed out, killing its process group", extra={"exec_id": self.exec_id})
        self.kill()

    def _finish(self) -> None:
        if self.state != RUNNING or self._status is None:
            return
        code, signum = self._status
        self.exit = {
            "exit_code": code,
            "signal": signal_name(signum) if signum else None,
            "timed_out": self._timed_out,
            "stdout_len": len(self._captures["stdout"].data),
            "stderr_len": len(self._captures["stderr"].data),
            "stdout_dropped": self._captures["stdout"].dropped,
            "stderr_dropped": self._captures["stderr"].dropped,
        }
        self.state = EXITED
        self._release()
        self._end()

    def _release(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for pump in self._pumps:
            pump.close()
        if self._stdin is not None:
            self._stdin.close()
        launched, self._launched = self._launched, None
        if launched is not None:
            if launched.stdio.control is not None:
                os.close(launched.stdio.control)
            for cleanup in launched.cleanup:
                cleanup()

    def _end(self) -> None:
        self.finished_at = time.time()
        self.finished.set_result(None)
        self._sink.finished(self)

    # -- requests --------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL every process of the exec: its cgroup and process groups (timeouts,
        shutdown). Processes of a finished exec are the tracker's to kill."""
        if self._launched is not None and self.procs is not None:
            self.procs.kill()

    def send_signal(self, signum: int) -> None:
        launched = self._require_running()
        _signal_groups(launched.signal_groups, signum)

    def resize(self, width: int, height: int) -> None:
        if not self.spec.tty:
            raise AgentError(NOT_TTY, f"exec {self.exec_id} has no TTY")
        launched = self._require_running()
        if launched.resize is not None:
            launched.resize(width, height)
        elif launched.stdio.control is not None:
            set_winsize(launched.stdio.control, width, height)

    async def write_stdin(self, data: bytes, *, close: bool) -> None:
        self._require_running()
        if self._stdin is None:
            raise AgentError(STDIN_CLOSED, f"exec {self.exec_id} was started without stdin")
        await self._stdin.write(data, close=close)

    def _require_running(self) -> Launched:
        if self._launched is None:
            raise AgentError(NOT_RUNNING, f"exec {self.exec_id} is not running")
        return self._launched

    # -- views -----------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """The protocol's exec state object (without captures)."""
        return {
            "exec_id": self.exec_id,
            "state": self.state,
            "pid": self.pid,
            "tty": self.spec.tty,
            "container_id": self.spec.container_id,
            "meta": self.spec.meta,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "exit": self.exit,
            "error": self.error,
        }

    def captures(self) -> bytes:
        """Captured stdout then stderr; empty until the exec has exited."""
        if self.exit is None:
            return b""
        return bytes(self._captures["stdout"].data) + bytes(self._captures["stderr"].data)


def _signal_groups(groups: tuple[int, ...], signum: int) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)
