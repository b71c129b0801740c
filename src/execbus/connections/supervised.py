"""One supervised connection lifecycle for every remote agent kind.

connect → ready → serve (with a heartbeat) → lost → backoff → reconnect, until
closed. Subclasses say how to connect, how a session runs and ends, how to
ping and how to close; this class owns the loop and the *link state* that
operators and callers see: connected or not, and why not (refused token, TLS
verification, connection refused, timeout).

The state is logged once per change (a WARNING when the link goes down or its
reason changes, an INFO when it recovers), reported to the listener
(``on_disconnected`` with the reason), and used to fail calls fast: a call
while the link is down waits a little for a reconnect, then fails with the
reason, and a refused authentication fails at once with its own code.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any, Generic, TypeVar

from execbus.backoff import backoff_delay
from execbus.connections.base import AgentConnection, AgentInfo, AgentListener, LinkState
from execbus.errors import (
    AgentAuthFailed,
    AgentDisconnected,
    AgentError,
    AgentUnavailable,
    ErrorCode,
    ExecbusError,
    Unsupported,
)

log = logging.getLogger("execbus.agent_client")

S = TypeVar("S")

# Share of the call timeout a call waits for a lost link to come back: the
# rest keeps the whole call within one call timeout (so the retry layer's
# per-attempt timeout never fires first and turns it into a retry).
RECONNECT_WAIT_SHARE = 0.8


def link_error(exc: BaseException, what: str) -> AgentError:
    """Why a connection attempt failed, as the error calls will see."""
    if isinstance(exc, AgentError | Unsupported):
        return exc if isinstance(exc, AgentError) else AgentUnavailable(exc.message)
    if isinstance(exc, TimeoutError):
        return AgentUnavailable(f"{what}: no answer in time (timed out)")
    if isinstance(exc, ConnectionRefusedError):
        return AgentUnavailable(f"{what}: connection refused")
    if isinstance(exc, OSError):
        return AgentUnavailable(f"{what}: {exc.strerror or exc}")
    return AgentUnavailable(f"{what}: unexpected answer: {exc!r}")


class SupervisedConnection(AgentConnection, Generic[S]):
    """The connect/serve/reconnect loop and the link state, for one agent."""

    kind = "agent"  # how log lines name the peer

    def __init__(
        self, name: str, *, call_timeout: float, heartbeat: float, max_backoff: float
    ) -> None:
        self.name = name
        self._call_timeout = call_timeout
        self._heartbeat = heartbeat
        self._max_backoff = max_backoff
        self._session: S | None = None
        self._ready = asyncio.Event()
        self._info: AgentInfo | None = None
        self._listener: AgentListener | None = None
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._state = LinkState(False, "not connected yet", since=time.time())

    # -- hooks ------------------------------------------------------------

    @abc.abstractmethod
    async def _connect(self) -> tuple[S, AgentInfo]:
        """Dial and handshake; raise an :class:`AgentError` that says why not."""

    @abc.abstractmethod
    async def _session_ended(self, session: S) -> str:
        """Serve ``session`` until it ends; the reason it ended."""

    @abc.abstractmethod
    async def _ping(self, session: S) -> None:
        """One heartbeat round trip; raises :class:`AgentError` when unanswered."""

    @abc.abstractmethod
    def _abort(self, session: S, reason: str) -> None:
        """Make :meth:`_session_ended` return (the peer stopped answering)."""

    @abc.abstractmethod
    async def _close_session(self, session: S, reason: str) -> None:
        """Release what the session holds (pending calls fail with ``reason``)."""

    async def _before_close(self) -> None:
        """Stop background work before the session is closed (pollers, ...)."""

    # -- the interface --------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    @property
    def info(self) -> AgentInfo | None:
        return self._info

    @property
    def state(self) -> LinkState:
        """The link state now."""
        return self._state

    @property
    def last_error(self) -> str:
        """Why the link is down ("" while it is up)."""
        return self._state.reason

    async def open(self, listener: AgentListener) -> None:
        self._listener = listener
        self._runner = asyncio.create_task(self._run(), name=f"{self.kind}-{self.name}")

    async def close(self) -> None:
        self._closing = True
        await self._before_close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        session, self._session = self._session, None
        if session is not None:
            await self._close_session(session, "connection closed")
        self._ready.clear()

    # -- the loop ---------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            try:
                session, info = await self._connect()
            except Exception as exc:
                error = link_error(exc, f"{self.kind} {self.name!r}")
                self._went_down(error)
                attempt += 1
                # A refused identity or an unusable peer will not heal in 50 ms.
                transient = isinstance(error, AgentUnavailable) and not isinstance(exc, Unsupported)
                await asyncio.sleep(
                    backoff_delay(attempt, cap=self._max_backoff)
                    if transient
                    else self._max_backoff
                )
                continue
            attempt = 0
            await self._serve(session, info)

    async def _serve(self, session: S, info: AgentInfo) -> None:
        boot_changed = self._info is not None and self._info.boot_id != info.boot_id
        self._info = info
        self._session = session
        self._ready.set()
        self._came_up()
        self._spawn(self._notify_connected(boot_changed))
        heartbeat = asyncio.create_task(self._heartbeat_loop(session))
        reason = "the connection ended"
        try:
            reason = await self._session_ended(session)
        finally:
            heartbeat.cancel()
            self._ready.clear()
            self._session = None
            await self._close_session(session, f"connection to {self.name!r} lost: {reason}")
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        if not self._closing:
            self._went_down(AgentUnavailable(f"{self.kind} {self.name!r} disconnected: {reason}"))

    async def _heartbeat_loop(self, session: S) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            try:
                await self._ping(session)
            except AgentError as exc:
                self._abort(session, f"missed a heartbeat: {exc.message}")
                return

    async def _notify_connected(self, boot_changed: bool) -> None:
        if self._listener is not None:
            await self._listener.on_connected(self.name, boot_changed)

    # -- the link state -------------------------------------------------

    def _went_down(self, error: ExecbusError) -> None:
        old = self._state
        code = error.code if isinstance(error, AgentAuthFailed) else ErrorCode.AGENT_UNAVAILABLE
        if not old.connected and (old.reason, old.code) == (error.message, code):
            return  # the same failure again: said already
        self._state = LinkState(False, error.message, code, time.time())
        log.warning("%s (%s)", error.message, code, extra={"agent": self.name, "code": code})
        if self._listener is not None and not self._closing:
            self._spawn(self._listener.on_disconnected(self.name, error.message))

    def _came_up(self) -> None:
        old = self._state
        self._state = LinkState(True, since=time.time())
        boot = self._info.boot_id if self._info else "?"
        if old.reason == "not connected yet":
            log.info("%s %s connected (boot %s)", self.kind, self.name, boot)
        else:
            log.info(
                "%s %s connected again after %.1f s (boot %s)",
                self.kind,
                self.name,
                self._state.since - old.since,
                boot,
                extra={"agent": self.name},
            )

    async def _live_session(self) -> S:
        """The session to call on; fails fast (with the reason) while the link is down."""
        if self._closing:
            raise AgentUnavailable(f"{self.kind} {self.name!r}: the connection is closed")
        if not self._ready.is_set():
            state = self._state
            if state.code == ErrorCode.AGENT_AUTH_FAILED:
                raise AgentAuthFailed(state.reason)
            try:
                async with asyncio.timeout(self._call_timeout * RECONNECT_WAIT_SHARE):
                    await self._ready.wait()
            except TimeoutError:
                raise AgentDisconnected(
                    f"{self.kind} {self.name!r} is not connected: {self._state.reason}"
                ) from None
        session = self._session
        if session is None:
            raise AgentDisconnected(
                f"{self.kind} {self.name!r} is not connected: {self._state.reason}"
            )
        return session

    # -- background tasks -------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "%s %s: background task failed", self.kind, self.name, exc_info=task.exception()
            )
