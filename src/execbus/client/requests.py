"""The request API about execs that exist: inspect, list, resize, signal, stdin, wait, remove.

:class:`ExecRequests` sends each request through the connected
:class:`~execbus.client.session.Session` (after checking that a worker serves
the target) and turns the reply into a record or the typed error.
:class:`~execbus.client.Client` is one, over its own connection, and adds
creating and running execs and following events; an
:class:`~execbus.client.Execution` calls the one that sent it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from execbus.client.config import model, signal_arg
from execbus.client.exits import Final, Watch
from execbus.client.results import info_of
from execbus.client.rpc import PendingReply
from execbus.client.session import Session
from execbus.client.target import AgentTarget, Target
from execbus.errors import ErrorCode, ExecTimeout, InternalError
from execbus.wire.records import FINISHED_STATES, ExecInfo, ExecList
from execbus.wire.replies import Reply
from execbus.wire.requests import (
    MAX_STDIN_CHUNK,
    InspectRequest,
    ListRequest,
    RemoveRequest,
    RequestBase,
    ResizeRequest,
    SignalRequest,
    StdinRequest,
    WaitRequest,
)

# The worker publishes the reply just ahead of the exit event; when the event
# still wins (a failover: the new owner replies after its sync), wait this long
# for the reply, which carries the full record.
REPLY_GRACE = 0.5


async def first_of(pending: PendingReply, watch: Watch) -> tuple[Reply | None, Final | None]:
    """The reply, or else the end seen first plus the reply if it follows promptly."""
    waiting: list[asyncio.Future[Any]] = [pending.future, watch.future]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if pending.future.done():
        return pending.future.result(), None
    final = watch.future.result()
    reply: Reply | None = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(REPLY_GRACE):  # not wait_for: see loops.wait_event
            reply = await asyncio.shield(pending.future)
    return reply, final


class ExecRequests:
    """Requests about the execs of one agent, each answered by a record (``list``: several)."""

    def __init__(self, session: Callable[[], Session]) -> None:
        # The connected session; raises BrokerError when there is none (yet, or any more).
        self._session = session

    async def _call(self, target: Target, request: RequestBase) -> Reply:
        session = self._session()
        await session.directory.ensure(target)
        reply = await session.rpc.call(target, request, session.request_timeout)
        if reply.error is not None and reply.error.code == ErrorCode.UNKNOWN_AGENT:
            session.directory.forget(target)
        return reply

    async def _exec_call(self, target: Target, request: RequestBase) -> ExecInfo:
        return info_of(await self._call(target, request))

    async def inspect(self, agent: str, exec_id: str, *, include_output: bool = False) -> ExecInfo:
        """One exec's record (:class:`~execbus.errors.NotFound` if unknown); its captured
        output (``exit.stdout``/``stderr``) only with ``include_output``."""
        request = model(InspectRequest, agent=agent, exec_id=exec_id, include_output=include_output)
        return await self._exec_call(AgentTarget(agent), request)

    async def resize(self, agent: str, exec_id: str, width: int, height: int) -> ExecInfo:
        """Resize a running TTY exec's terminal."""
        request = model(ResizeRequest, agent=agent, exec_id=exec_id, width=width, height=height)
        return await self._exec_call(AgentTarget(agent), request)

    async def signal(self, agent: str, exec_id: str, signal: str | int = "SIGKILL") -> ExecInfo:
        """Send a signal (``"SIGTERM"``, ``"TERM"`` or a number) to the exec's process group."""
        request = model(SignalRequest, agent=agent, exec_id=exec_id, signal=signal_arg(signal))
        return await self._exec_call(AgentTarget(agent), request)

    async def write_stdin(
        self, agent: str, exec_id: str, data: bytes, *, close: bool = False
    ) -> ExecInfo:
        """Write ``data`` to the exec's stdin (in order, in chunks); ``close`` closes it after."""
        chunks = [data[i : i + MAX_STDIN_CHUNK] for i in range(0, len(data), MAX_STDIN_CHUNK)]
        chunks = chunks or [b""]
        info: ExecInfo | None = None
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            request = model(
                StdinRequest, agent=agent, exec_id=exec_id, data=chunk, close=close and last
            )
            info = await self._exec_call(AgentTarget(agent), request)
        assert info is not None
        return info

    async def close_stdin(self, agent: str, exec_id: str) -> ExecInfo:
        """Close the exec's stdin (the process reads end-of-file)."""
        return await self.write_stdin(agent, exec_id, b"", close=True)

    async def wait(
        self,
        agent: str,
        exec_id: str,
        timeout: float | None = None,
        *,
        include_output: bool = True,
    ) -> ExecInfo:
        """The exec's record once it has finished, with its captured output unless
        ``include_output=False``; :class:`ExecTimeout` after ``timeout`` s."""
        session, target = self._session(), AgentTarget(agent)
        await session.directory.ensure(target)
        request = model(WaitRequest, agent=agent, exec_id=exec_id, include_output=include_output)
        watch = await session.exits.watch(target, exec_id)
        try:
            pending = await session.rpc.send(target, request)
            try:
                async with asyncio.timeout(timeout):
                    reply, final = await first_of(pending, watch)
            except TimeoutError:
                raise ExecTimeout(f"exec {exec_id} did not finish within {timeout:g} s") from None
            finally:
                session.rpc.discard(pending)
        finally:
            session.exits.unwatch(watch)
        if reply is not None:
            return info_of(reply)
        if isinstance(final, ExecInfo):
            return final
        return await self.inspect(agent, exec_id, include_output=include_output)

    async def remove(self, agent: str, exec_id: str, *, force: bool = False) -> ExecInfo:
        """Forget a finished exec (``force``: kill a running one first)."""
        request = model(RemoveRequest, agent=agent, exec_id=exec_id, force=force)
        return await self._exec_call(AgentTarget(agent), request)

    async def _finished(self, agent: str, exec_id: str) -> bool:
        return (await self.inspect(agent, exec_id)).state in FINISHED_STATES

    # Keep ``list`` last: below its definition, ``list`` in an annotation of this
    # class body would name the method, not the builtin.
    async def list(
        self, agent: str, container_id: str | None = None, include_finished: bool = True
    ) -> list[ExecInfo]:
        """The execs of ``agent`` (of one container, if given)."""
        request = model(
            ListRequest, agent=agent, container_id=container_id, include_finished=include_finished
        )
        reply = await self._call(AgentTarget(agent), request)
        if not reply.ok:
            info_of(reply)  # raises the typed error
        if not isinstance(reply.result, ExecList):
            raise InternalError("the reply to exec.list carries no list")
        return reply.result.execs
