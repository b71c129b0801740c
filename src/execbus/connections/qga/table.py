"""The exec table: what qemu-ga forgets, remembered here, in the worker.

qemu-ga pushes nothing, so every running exec is polled with
``guest-exec-status`` (backoff from ``poll_initial`` doubling to
``poll_max``), and killed (through the signal helper) when its timeout is
up. qemu-ga forgets a pid once it has answered ``exited``, so the table keeps
pids, configs and exits until ``ack``. An exec that ends is *settled* once:
its state is final, its waiters wake, and the connection hears of it through
``on_settled`` (to push the output chunks and the exit to its listener, see
:func:`deliver`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from execbus.connections.base import AgentExec, AgentListener
from execbus.connections.qga.stream import QgaCall, QgaCommandError
from execbus.connections.qga.translate import Chunk, Streams, exit_from_status, output_chunks
from execbus.errors import (
    AgentError,
    AgentProtocolError,
    AgentUnavailable,
    Conflict,
    ErrorCode,
    ExecbusError,
    NotFound,
)
from execbus.wire.config import ExecConfig
from execbus.wire.records import ErrorInfo, ExitInfo

log = logging.getLogger("execbus.qga")

# Signal ``pid`` (and its descendants) in the guest; Conflict when it is gone.
Kill = Callable[[int, int], Awaitable[None]]
# An exec was settled: its final view and the output chunks to push before the exit.
OnSettled = Callable[[AgentExec, list[Chunk]], None]


@dataclass(slots=True, eq=False)
class QgaExec:
    """One exec in the table: what qemu-ga forgets, we remember."""

    exec_id: str
    config: ExecConfig
    meta: dict[str, Any]
    state: str = "starting"  # starting | running | exited | failed
    pid: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    deadline: float | None = None  # loop time at which the timeout kill is due
    sent: bool = False  # guest-exec was written: qemu-ga may have spawned it
    kill_done: bool = False  # the timeout kill ran (or cannot run)
    timed_out: bool = False
    exit: ExitInfo | None = None
    error: ErrorInfo | None = None
    spawned: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    poller: asyncio.Task[None] | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("exited", "failed")

    def mark_sent(self) -> None:
        self.sent = True

    def view(self, new: bool = False) -> AgentExec:
        """As the connection reports it (qemu-ga has no TTY and no containers: the defaults)."""
        return AgentExec(
            exec_id=self.exec_id,
            state="running" if self.state == "starting" else self.state,
            pid=self.pid,
            meta=self.meta,
            started_at=self.started_at,
            finished_at=self.finished_at,
            exit=self.exit,
            error=self.error,
            new=new,
        )


class ExecTable:
    """The execs of one qemu-ga, each polled until it ends; the connection only wires it.

    ``call`` runs a command on the live stream (it waits a little for a lost
    connection to come back, then fails with an :class:`AgentError`), ``kill``
    signals a process tree in the guest, and ``on_settled`` hears of every
    exec that ends on its own (never awaited here).
    """

    def __init__(
        self,
        name: str,
        *,
        call: QgaCall,
        kill: Kill,
        on_settled: OnSettled,
        poll_initial: float,
        poll_max: float,
    ) -> None:
        self.name = name
        self._call = call
        self._kill = kill
        self._on_settled = on_settled
        self._poll_initial = poll_initial
        self._poll_max = poll_max
        self._execs: dict[str, QgaExec] = {}

    # -- lookups ----------------------------------------------------------

    def find(self, exec_id: str) -> QgaExec | None:
        return self._execs.get(exec_id)

    def get(self, exec_id: str) -> QgaExec:
        entry = self._execs.get(exec_id)
        if entry is None:
            raise NotFound(f"qemu-ga {self.name!r} has no exec {exec_id!r}")
        return entry

    def views(self) -> list[AgentExec]:
        """Every exec qemu-ga was asked to start (running, or finished and not acked)."""
        return [e.view() for e in self._execs.values() if e.state != "starting"]

    def ack(self, exec_id: str) -> None:
        """Forget a finished exec (unknown ids are already forgotten)."""
        entry = self._execs.get(exec_id)
        if entry is None:
            return
        if not entry.finished:
            raise Conflict(f"exec {exec_id!r} has not finished")
        del self._execs[exec_id]

    # -- starting ---------------------------------------------------------

    def add(self, exec_id: str, config: ExecConfig, meta: dict[str, Any]) -> QgaExec:
        """A new exec, ``starting`` until qemu-ga answers its guest-exec."""
        entry = QgaExec(exec_id, config, meta)
        self._execs[exec_id] = entry
        return entry

    def discard(self, entry: QgaExec) -> None:
        """Forget an exec qemu-ga never spawned: a retry starts it afresh."""
        del self._execs[entry.exec_id]
        entry.spawned.set()

    async def repeated_start(self, entry: QgaExec, timeout: float) -> AgentExec:
        """A repeated start: the recorded outcome, never a second process."""
        try:
            async with asyncio.timeout(timeout):
                await entry.spawned.wait()
        except TimeoutError:
            raise AgentUnavailable(f"exec {entry.exec_id!r} is still being started") from None
        if entry.state == "starting":  # that start gave up before qemu-ga saw it
            raise AgentUnavailable(f"exec {entry.exec_id!r} did not start; try again")
        return entry.view(new=False)

    def running(self, entry: QgaExec, pid: int) -> None:
        """qemu-ga spawned it as ``pid``: poll it (and arm its timeout)."""
        entry.pid = pid
        entry.started_at = time.time()
        entry.state = "running"
        if entry.config.timeout is not None:
            entry.deadline = asyncio.get_running_loop().time() + entry.config.timeout
        entry.spawned.set()
        entry.poller = asyncio.create_task(self._poll(entry), name=f"qga-poll-{entry.exec_id}")

    def refused(self, entry: QgaExec, error: ErrorInfo) -> None:
        """qemu-ga answered guest-exec with an error: nothing was spawned."""
        entry.error = error
        self._settle(entry, "failed", notify=False)  # the start's answer carries it

    def start_lost(self, entry: QgaExec, exc: BaseException) -> None:
        """guest-exec was sent but its answer lost: it may have run, so never resend it."""
        why = "the call was cancelled" if isinstance(exc, asyncio.CancelledError) else str(exc)
        entry.error = ErrorInfo(
            code=ErrorCode.AGENT_LOST,
            message=(
                f"the answer to guest-exec was lost ({why}); the command may have started "
                "in the guest, but its pid is unknown, so it is not started again"
            )[:4096],
        )
        self._settle(entry, "failed", notify=False)

    # -- (re)connections --------------------------------------------------

    async def reconcile(self, call: QgaCall, restart: str | None) -> None:
        """Settle every exec that was running when the last session ended.

        ``call`` runs on the new stream (not ready yet); ``restart`` says why
        qemu-ga's identity changed (``None``: it did not), in which case the new
        qemu-ga knows none of the old pids.
        """
        for entry in [e for e in self._execs.values() if e.state == "running"]:
            if restart is not None:
                self._lose(
                    entry,
                    f"{restart}: the new qemu-ga does not know pid "
                    f"{entry.pid}, so the exit status and output are lost",
                )
                continue
            try:
                status = await call("guest-exec-status", {"pid": entry.pid})
            except QgaCommandError as exc:
                self._lose(entry, self._forgotten(entry, exc))
                continue
            if status.get("exited"):
                self._complete(entry, status)

    def cancel_pollers(self) -> list[asyncio.Task[None]]:
        """Stop polling (running guest processes are left alone); the pollers, to await."""
        pollers = [e.poller for e in self._execs.values() if e.poller is not None]
        for poller in pollers:
            poller.cancel()
        return pollers

    # -- completion ---------------------------------------------------------

    async def _poll(self, entry: QgaExec) -> None:
        """Poll ``guest-exec-status`` until the exec ends; kill it when its time is up."""
        delay = self._poll_initial
        while not entry.finished:
            try:
                status: dict[str, Any] | None = await self._call(
                    "guest-exec-status", {"pid": entry.pid}
                )
            except QgaCommandError as exc:
                self._lose(entry, self._forgotten(entry, exc))
                return
            except AgentError:
                status = None  # not connected; reconcile or the next round settles it
            if entry.finished:
                return
            if status is not None and status.get("exited"):
                self._complete(entry, status)
                return
            if status is not None and self._overdue(entry):
                await self._kill_overdue(entry)
            await asyncio.sleep(self._next_sleep(entry, delay))
            delay = min(delay * 2, self._poll_max)

    def _overdue(self, entry: QgaExec) -> bool:
        loop_time = asyncio.get_running_loop().time()
        return entry.deadline is not None and not entry.kill_done and loop_time >= entry.deadline

    def _next_sleep(self, entry: QgaExec, delay: float) -> float:
        """The backoff delay, shortened so a timeout kill is not late."""
        if entry.deadline is None or entry.kill_done:
            return delay
        return max(0.0, min(delay, entry.deadline - asyncio.get_running_loop().time()))

    async def _kill_overdue(self, entry: QgaExec) -> None:
        assert entry.pid is not None
        try:
            await self._kill(entry.pid, int(signal.SIGKILL))
        except AgentUnavailable as exc:
            log.warning("exec %s: timeout kill failed, will retry: %s", entry.exec_id, exc)
            return
        except Conflict:
            entry.kill_done = True  # it was gone already: it ended on its own
            return
        except ExecbusError as exc:
            entry.kill_done = True
            log.error("exec %s: cannot enforce its timeout: %s", entry.exec_id, exc)
            return
        entry.kill_done = True
        entry.timed_out = True

    def _complete(self, entry: QgaExec, status: dict[str, Any]) -> None:
        if entry.finished:
            return
        finished_at = time.time()
        try:
            streams = Streams.from_status(status)
        except AgentProtocolError as exc:
            entry.error = ErrorInfo(code=ErrorCode.INTERNAL, message=exc.message)
            entry.finished_at = finished_at
            self._settle(entry, "failed")
            return
        entry.exit = exit_from_status(
            status,
            streams,
            entry.config,
            started_at=entry.started_at,
            finished_at=finished_at,
            timed_out=entry.timed_out,
        )
        entry.finished_at = finished_at
        chunks = output_chunks(entry.config, streams) if entry.config.stream_output else []
        self._settle(entry, "exited", chunks)

    def _forgotten(self, entry: QgaExec, exc: QgaCommandError) -> str:
        return (
            f"qemu-ga no longer knows pid {entry.pid} ({exc.desc}): it restarted, or its "
            "answer with the exit status was lost with the connection; the exit status and "
            "output are lost (the process may still run, orphaned, in the guest)"
        )

    def _lose(self, entry: QgaExec, message: str) -> None:
        if entry.finished:
            return
        entry.error = ErrorInfo(code=ErrorCode.AGENT_LOST, message=message[:4096])
        entry.finished_at = time.time()
        self._settle(entry, "failed")

    def _settle(
        self, entry: QgaExec, state: str, chunks: list[Chunk] | None = None, notify: bool = True
    ) -> None:
        """Finish an exec; ``on_settled`` hears of it (a start's own answer carries it)."""
        entry.state = state
        entry.spawned.set()
        entry.done.set()
        if notify:
            self._on_settled(entry.view(), chunks or [])


async def deliver(
    listener: AgentListener, agent: str, state: AgentExec, chunks: Iterable[Chunk]
) -> None:
    """Output chunks first, then the exit: followers end their stream at the exit."""
    for stream, seq, data in chunks:
        await listener.on_output(agent, state.exec_id, stream, seq, data)
    await listener.on_exit(agent, state)
