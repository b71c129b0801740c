"""The :class:`AgentConnection` to one qemu-ga: the lifecycle hooks and the interface.

:class:`QgaConnection` plugs qemu-ga into the supervised lifecycle
(:class:`~execbus.connections.supervised.SupervisedConnection`): connecting
dials a :class:`QgaStream`, resynchronises it, checks qemu-ga
(:mod:`.identity`) and settles the execs of the last session before the
connection is ready. The interface (start, inspect, wait, signal, list, ack,
ping) is answered from the :class:`ExecTable`, which polls the running execs,
and the :class:`SignalHelper`, which emulates signals; TTYs, streamed stdin
and resize are :class:`~execbus.errors.Unsupported`. This class only wires
those collaborators and keeps what the handshake found (does ``guest-exec``
take ``cwd``; is this qemu-ga unusable, and why).
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable
from typing import Any

from execbus.agent.errors import AgentError as AgentRequestError
from execbus.agent.signames import parse_signal
from execbus.connections.base import AgentExec, AgentInfo
from execbus.connections.qga.identity import agent_info, guest_info, probe_cwd
from execbus.connections.qga.killtree import SignalHelper
from execbus.connections.qga.stream import QgaCommandError, QgaStream
from execbus.connections.qga.table import ExecTable, QgaExec, deliver
from execbus.connections.qga.translate import (
    MAX_INPUT_DATA,
    Chunk,
    guest_exec_args,
    restart_cause,
    start_failure,
    unsupported_reason,
)
from execbus.connections.supervised import SupervisedConnection
from execbus.errors import (
    Conflict,
    InvalidRequest,
    LimitExceeded,
    Unsupported,
)
from execbus.wire.config import ExecConfig


class QgaConnection(SupervisedConnection[QgaStream]):
    """An :class:`AgentConnection` to one qemu-ga on a Unix socket (``qga+unix://``)."""

    kind = "qemu-ga"

    def __init__(
        self,
        name: str,
        path: str,
        *,
        call_timeout: float = 10.0,
        heartbeat: float = 2.0,
        max_backoff: float = 2.0,
        poll_initial: float = 0.0005,
        poll_max: float = 0.05,
    ) -> None:
        super().__init__(
            name, call_timeout=call_timeout, heartbeat=heartbeat, max_backoff=max_backoff
        )
        self.path = path
        self._drain_timeout = min(call_timeout, 2.0)
        self._signals = SignalHelper(
            self._call,
            name=name,
            timeout=call_timeout,
            poll_initial=poll_initial,
            poll_max=poll_max,
        )
        self._table = ExecTable(
            name,
            call=self._call,
            kill=self._signals.signal_tree,
            on_settled=self._settled,
            poll_initial=poll_initial,
            poll_max=poll_max,
        )
        # Used as boot id when qemu-ga's file commands are blocked: then a
        # restarted qemu-ga is noticed per pid, never as a boot change.
        self._fallback_boot_id = f"qga-{uuid.uuid4().hex}"
        self._cwd_supported: bool | None = None  # None: not probed yet
        self._unusable: str | None = None  # why this qemu-ga cannot run execs at all

    async def _before_close(self) -> None:
        """Running guest processes are left alone; pollers and callbacks stop first
        (the stream drains only once no call reads)."""
        self._tasks.update(self._table.cancel_pollers())

    # -- connection lifecycle -------------------------------------------

    async def _connect(self) -> tuple[QgaStream, AgentInfo]:
        """Dial, resynchronise, check qemu-ga, then settle the execs of the last session."""
        stream = await QgaStream.open_unix(self.path, self._call_timeout)
        try:
            # A second client waits in qemu-ga's backlog without an answer: the
            # sync timing out is how we notice another worker holds the agent.
            await stream.sync(self._call_timeout)
            info = await self._handshake(stream)
            boot_changed = self._info is not None and self._info.boot_id != info.boot_id
            await self._reconcile(stream, boot_changed, info)
        except Unsupported as exc:
            # Reconfiguring qemu-ga (--block-rpcs) needs its restart: retried slowly.
            self._unusable = exc.message
            await stream.aclose(self._drain_timeout)
            raise
        except BaseException:
            await stream.aclose(self._drain_timeout)
            raise
        self._unusable = None
        return stream, info

    async def _handshake(self, stream: QgaStream) -> AgentInfo:
        timeout = self._call_timeout
        guest = await guest_info(stream, where=self.path, timeout=timeout)
        self._cwd_supported = await probe_cwd(stream, timeout)
        return await agent_info(
            stream,
            guest,
            cwd=self._cwd_supported,
            timeout=timeout,
            fallback_boot_id=self._fallback_boot_id,
            name=self.name,
        )

    async def _reconcile(self, stream: QgaStream, boot_changed: bool, info: AgentInfo) -> None:
        """Settle every exec that was running when the last session ended.

        Done before the connection is ready, so no new exec can be spawned
        (and take a reused pid) before the old pids are checked.
        """
        old = self._info.boot_id if self._info else ""
        restart = restart_cause(old, info.boot_id) if boot_changed else None
        call = functools.partial(stream.call, timeout=self._call_timeout)
        await self._table.reconcile(call, restart)

    async def _session_ended(self, session: QgaStream) -> str:
        await session.closed.wait()
        return session.reason

    async def _ping(self, session: QgaStream) -> None:
        # While idle too: a dead qemu-ga is otherwise noticed only by the next call.
        await session.call("guest-ping", timeout=self._heartbeat * 2)

    def _abort(self, session: QgaStream, reason: str) -> None:
        session.abort(reason)

    async def _close_session(self, session: QgaStream, reason: str) -> None:
        await session.aclose(self._drain_timeout)

    def _settled(self, state: AgentExec, chunks: list[Chunk]) -> None:
        """An exec ended: the listener hears of it in a task (never awaited here)."""
        if self._listener is not None:
            self._spawn(deliver(self._listener, self.name, state, chunks))

    # -- commands ---------------------------------------------------------

    async def _call(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> Any:
        """One command on the live stream, waiting up to the call timeout for one."""
        stream = await self._live_session()
        return await stream.call(command, arguments, timeout=self._call_timeout, on_sent=on_sent)

    async def start(
        self,
        exec_id: str,
        config: ExecConfig,
        meta: dict[str, Any],
        *,
        input_data: bytes | None = None,
    ) -> AgentExec:
        """Spawn with ``guest-exec`` (idempotent by ``exec_id``).

        ``input_data`` (an extension for direct callers; the worker has no
        such field) is the whole stdin, given up front.
        """
        existing = self._table.find(exec_id)
        if existing is not None:
            return await self._table.repeated_start(existing, self._call_timeout)
        self._check_startable(config, input_data)
        args = guest_exec_args(config, input_data)
        entry = self._table.add(exec_id, config, meta)
        try:
            result = await self._call("guest-exec", args, on_sent=entry.mark_sent)
        except QgaCommandError as exc:
            return self._start_refused(entry, exc)
        except BaseException as exc:
            if not entry.sent:
                self._table.discard(entry)  # qemu-ga never saw it: a retry is safe
                raise
            self._table.start_lost(entry, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return entry.view(new=True)
        self._table.running(entry, int(result["pid"]))
        return entry.view(new=True)

    def _check_startable(self, config: ExecConfig, input_data: bytes | None) -> None:
        reason = unsupported_reason(config)
        if reason is None and config.working_dir is not None and self._cwd_supported is False:
            reason = self._no_cwd_reason()
        if reason is None and not self.connected and self._unusable is not None:
            reason = self._unusable
        if reason is not None:
            raise Unsupported(reason)
        if input_data is not None and len(input_data) > MAX_INPUT_DATA:
            raise LimitExceeded(
                f"qemu-ga input data is limited to {MAX_INPUT_DATA} bytes, got {len(input_data)}"
            )

    def _no_cwd_reason(self) -> str:
        version = self._info.agent_version if self._info else "qemu-ga"
        return (
            f"{version} cannot set a working directory: its guest-exec has no 'cwd' "
            "argument (newer qemu-ga versions have it)"
        )

    def _start_refused(self, entry: QgaExec, exc: QgaCommandError) -> AgentExec:
        """qemu-ga answered guest-exec with an error: nothing was spawned."""
        if "'cwd'" in exc.desc and "unexpected" in exc.desc:
            self._cwd_supported = False
            self._table.discard(entry)
            raise Unsupported(self._no_cwd_reason()) from exc
        self._table.refused(entry, start_failure(exc.desc))
        return entry.view(new=True)

    # -- the rest of the interface --------------------------------------

    async def inspect(self, exec_id: str) -> AgentExec:
        return self._table.get(exec_id).view()

    async def wait(self, exec_id: str) -> AgentExec:
        entry = self._table.get(exec_id)
        await entry.done.wait()
        return entry.view()

    async def signal(self, exec_id: str, signal: str | int) -> None:
        """Emulated: ``kill`` run in the guest through guest-exec (see :class:`SignalHelper`)."""
        entry = self._table.get(exec_id)
        try:
            signum = parse_signal(signal)
        except AgentRequestError as exc:
            raise InvalidRequest(exc.message) from None
        if entry.state != "running" or entry.pid is None:
            raise Conflict(f"exec {exec_id!r} is not running")
        await self._signals.signal_tree(entry.pid, signum)

    async def resize(self, exec_id: str, width: int, height: int) -> None:
        raise Unsupported("qemu-ga cannot resize a TTY: it cannot allocate one")

    async def write_stdin(self, exec_id: str, data: bytes, close: bool) -> None:
        raise Unsupported("qemu-ga cannot stream stdin: guest-exec takes the whole input up front")

    async def list(self) -> list[AgentExec]:
        return self._table.views()

    async def ack(self, exec_id: str) -> None:
        """Forget a finished exec (unknown ids are already forgotten)."""
        self._table.ack(exec_id)

    async def ping(self) -> None:
        await self._call("guest-ping")
