"""An exec in flight: :class:`Execution` completes from its reply or its exit event.

The worker that started the exec replies at its exit; if that worker dies,
the one that takes the agent over publishes the exit (and replies as well).
An :class:`Execution` takes whichever comes first, so a result is never lost
while the client stays connected.

A run sent to a pool starts without an agent: :attr:`Execution.agent` is
``None`` until the ``exec.created`` event (or the reply, or the exit) tells
where a worker placed it; :meth:`Execution.placed` waits for that, and the
calls that address the exec (stdin, signal, resize) go to that agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from execbus.client.exits import Final, Watch
from execbus.client.requests import ExecRequests, first_of
from execbus.client.results import RunResult, exception_for, info_of, result_of
from execbus.client.rpc import PendingReply
from execbus.client.session import Session
from execbus.client.target import Target
from execbus.errors import BrokerError, ExecbusError, InternalError
from execbus.wire.events import FailedEvent
from execbus.wire.records import ExecInfo
from execbus.wire.replies import Reply
from execbus.wire.requests import RunRequest, StartRequest

log = logging.getLogger("execbus.client")


def run_result(exec_id: str, reply: Reply | None, final: Final | None) -> RunResult:
    """The result from the reply, else from the exit event or record that came first."""
    if reply is not None and (final is None or not reply.ok):
        return result_of(info_of(reply), replayed=reply.replayed)
    if isinstance(final, ExecInfo):
        return result_of(final)
    if isinstance(final, FailedEvent):
        raise exception_for(final.error)
    if final is None:
        raise InternalError(f"exec {exec_id}: neither a reply nor an exit")
    info = reply.result if reply is not None and isinstance(reply.result, ExecInfo) else None
    replayed = reply is not None and reply.replayed
    return RunResult.from_exit(exec_id, final.exit, info, final.agent, replayed=replayed)


class Execution:
    """A started (or starting) exec; ``await execution.result()`` for how it ended.

    ``agent`` is the agent running it; for a run sent to ``pool``, ``None``
    until a worker placed it (``await execution.placed()`` waits for it).
    """

    def __init__(
        self,
        client: ExecRequests,
        session: Session,
        target: Target,
        exec_id: str,
        pending: PendingReply,
        watch: Watch,
    ) -> None:
        self.client = client  # what addresses the exec: write_stdin, signal, resize, inspect
        self.exec_id = exec_id
        self.pool = target.pool
        self._agent = target.agent
        self._rpc = session.rpc
        self._exits = session.exits
        self._pending = pending
        self._watch = watch
        self._result: RunResult | None = None

    @property
    def agent(self) -> str | None:
        """The agent running the exec (``None`` while a pool run is not placed yet)."""
        if self._agent is None:
            self._agent = self._learned()
        return self._agent

    def _learned(self) -> str | None:
        """The agent, if the watch or the reply has told it by now."""
        placed = self._watch.placed
        if placed.done() and not placed.cancelled():
            return placed.result()
        if self._watch.agent is not None:
            return self._watch.agent
        future = self._pending.future
        if future.done() and not future.cancelled() and future.exception() is None:
            agent = future.result().agent
            if agent is not None:
                self._exits.place(self._watch, agent)  # a re-check can now ask it
            return agent
        return None

    async def placed(self) -> str:
        """The agent running the exec, once known (at once unless it was sent to a pool)."""
        if self.agent is None:
            waiting: list[asyncio.Future[Any]] = [self._watch.placed, self._pending.future]
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        agent = self.agent
        if agent is not None:
            return agent
        future = self._pending.future
        if future.done() and not future.cancelled():
            exc = future.exception()
            if exc is not None:
                raise exc
            info_of(future.result())  # raises the reply's error
        raise BrokerError(f"exec {self.exec_id}: no worker of pool {self.pool!r} placed it")

    async def result(self) -> RunResult:
        """How the exec ended; raises the typed error if it failed to start."""
        if self._result is None:
            try:
                reply, final = await first_of(self._pending, self._watch)
            finally:
                self.forget()
            self._result = run_result(self.exec_id, reply, final)
            if self._agent is None:
                self._agent = self._result.agent
        return self._result

    def forget(self) -> None:
        """Stop waiting for the end (the exec itself goes on)."""
        if self._agent is None:  # what was learned so far outlives the watch
            self._agent = self._learned()
        self._rpc.discard(self._pending)
        self._exits.unwatch(self._watch)

    async def write_stdin(self, data: bytes, *, close: bool = False) -> ExecInfo:
        """Write to the exec's stdin (it must have been run with ``attach_stdin``)."""
        return await self.client.write_stdin(await self.placed(), self.exec_id, data, close=close)

    async def close_stdin(self) -> ExecInfo:
        """Close the exec's stdin."""
        return await self.client.close_stdin(await self.placed(), self.exec_id)

    async def resize(self, width: int, height: int) -> ExecInfo:
        """Resize the exec's terminal (TTY execs)."""
        return await self.client.resize(await self.placed(), self.exec_id, width, height)

    async def signal(self, signal: str | int = "SIGKILL") -> ExecInfo:
        """Send a signal to the exec's process group."""
        return await self.client.signal(await self.placed(), self.exec_id, signal)

    async def inspect(self) -> ExecInfo:
        """The exec's record, from the agent running it."""
        return await self.client.inspect(await self.placed(), self.exec_id)


async def send_watched(
    client: ExecRequests,
    session: Session,
    target: Target,
    exec_id: str,
    request: RunRequest | StartRequest,
) -> Execution:
    """Publish the request that starts an exec (a run, or a start), watching for its end."""
    await session.directory.ensure(target)
    # Before the request: never miss the end (nor, for a pool, the placement).
    watch = await session.exits.watch(target, exec_id)
    try:
        pending = await session.rpc.send(target, request)
    except BaseException:
        session.exits.unwatch(watch)
        raise
    return Execution(client, session, target, exec_id, pending, watch)


async def run_to_exit(execution: Execution, stdin: bytes | None) -> RunResult:
    """How ``execution`` ended, writing ``stdin`` to it meanwhile (then closing it)."""
    feeder = asyncio.create_task(_feed(execution, stdin)) if stdin is not None else None
    try:
        return await execution.result()
    finally:
        execution.forget()
        if feeder is not None:
            if not feeder.done():
                feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder


async def _feed(execution: Execution, data: bytes) -> None:
    try:
        await execution.write_stdin(data, close=True)
    except ExecbusError as exc:  # e.g. the process exited without reading: harmless
        log.debug("stdin of exec %s not written: %s", execution.exec_id, exc.message)
