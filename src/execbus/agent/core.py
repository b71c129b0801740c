"""The agent core: serves the connections handed to it and owns the execs.

:class:`AgentCore` assumes nothing about the event loop, signals or sockets,
so a worker can embed it and talk to it over one end of a
``socket.socketpair()`` (:mod:`execbus.connections.local`);
:class:`~execbus.agent.server.AgentServer` feeds it the connections of its
listeners. The core admits connections (limits, the handshake cap, eviction
of the oldest unauthenticated one), upgrades ``tls://`` ones, answers
``hello`` and hands each connection to a :class:`~execbus.agent.session.Session`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import ssl
import time
import uuid
from functools import partial
from typing import Any

from execbus.agent.config import validate
from execbus.agent.errors import (
    INVALID,
    LIMIT_EXCEEDED,
    UNAUTHORIZED,
    UNSUPPORTED_VERSION,
    AgentError,
)
from execbus.agent.memory import Reclaimer
from execbus.agent.metrics import AgentMetrics
from execbus.agent.options import AgentOptions, handshake_cap
from execbus.agent.protocol import PROTOCOL_VERSION, encode_frame
from execbus.agent.session import Session
from execbus.agent.starttls import start_tls
from execbus.agent.supervisor import Supervisor

__all__ = ["AGENT_NAME", "AGENT_VERSION", "AgentCore"]

log = logging.getLogger(__name__)

AGENT_NAME = "execbus-agent"
AGENT_VERSION = "0.1.0"
SUPPORTED_VERSIONS = (PROTOCOL_VERSION,)
_SESSION_CLOSE_WAIT = 5.0
DROP_LOG_INTERVAL = 60.0


class _Conn:
    """One admitted connection, from accept until it closes."""

    __slots__ = ("done", "evicted", "session", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.session: Session | None = None
        self.evicted = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class AgentCore:
    """The agent without its listeners: serves connections, owns the execs.

    Connections count against ``max_connections`` from the moment they are
    accepted, TLS handshake included. At most :func:`handshake_cap` of them may
    be unauthenticated (TLS or ``hello`` in progress) at once: a new one beyond
    that drops the oldest of them, so a flood of silent connections can
    neither fill every slot nor keep a client that does authenticate out.
    """

    def __init__(self, options: AgentOptions | None = None) -> None:
        """Raises :class:`~execbus.agent.config.ConfigError` for options out of
        bounds (see :func:`~execbus.agent.config.validate`), JournalError and
        CgroupError for an unusable ``state_dir`` or ``cgroup_root``."""
        self.options = options or AgentOptions()
        validate(self.options)
        self.boot_id = uuid.uuid4().hex
        self.supervisor = Supervisor(self.options)
        self._pending: dict[_Conn, None] = {}  # not greeted yet, oldest first
        self._greeted: set[_Conn] = set()
        self._conns: set[_Conn] = set()  # every connection still open
        self._closed = False
        self._reclaimer = Reclaimer()
        self._dropped = 0
        self._dropped_logged = -DROP_LOG_INTERVAL

    @property
    def metrics(self) -> AgentMetrics:
        """The agent's counters (kept by the supervisor; sessions add theirs)."""
        return self.supervisor.metrics

    @property
    def closing(self) -> bool:
        """True once :meth:`aclose` has begun."""
        return self._closed

    async def handle_stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        token: str | None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """Serve one connection until it closes. ``token``: what hello must carry;
        ``tls``: the connection is plain TCP still, to be upgraded first (the
        listener must not read from it before: see AgentServer)."""
        if self._closed:
            await _close(writer)
            return
        conn = self._admit(writer, tls is not None)
        if conn is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.handshake_timeout
        self.metrics.connection_opened()
        try:
            if tls is None or await self._start_tls(conn, tls, deadline):
                greeted = partial(self._greet, conn)
                session = Session(
                    self, reader, writer, token, deadline=deadline, on_greeted=greeted
                )
                conn.session = session
                if conn.evicted:
                    session.close()
                await session.serve()
        finally:
            self.metrics.connection_closed()
            self._conns.discard(conn)
            if conn in self._greeted:
                self._greeted.discard(conn)
            else:  # it never authenticated: its memory is worth taking back
                self._pending.pop(conn, None)
                self._reclaimer.soon()
            conn.done.set_result(None)

    def _admit(self, writer: asyncio.StreamWriter, tls: bool) -> _Conn | None:
        """Count a new connection in, dropping the oldest unauthenticated ones if
        needed; None (the connection refused and closed) when every slot is taken
        by an authenticated client."""
        limit = self.options.max_connections
        peer = str(writer.get_extra_info("peername") or "local")
        if len(self._greeted) >= limit:
            log.warning(
                "connection refused: too many connections",
                extra={"peer": peer, "max_connections": limit},
            )
            if not tls:  # a TLS client would take a frame in clear for a bad handshake
                message = f"the agent serves at most {limit} connections"
                error = {"code": LIMIT_EXCEEDED, "message": message}
                with contextlib.suppress(OSError):
                    writer.write(encode_frame({"re": None, "ok": False, "error": error}))
            writer.close()
            return None
        cap = handshake_cap(self.options)
        while self._pending and (
            len(self._pending) >= cap or len(self._greeted) + len(self._pending) >= limit
        ):
            self._evict(next(iter(self._pending)), cap)
        conn = _Conn(writer)
        self._pending[conn] = None
        self._conns.add(conn)
        return conn

    def _evict(self, conn: _Conn, cap: int) -> None:
        """Drop an unauthenticated connection to make room for a newer one."""
        del self._pending[conn]
        conn.evicted = True
        self._dropped += 1
        now = time.monotonic()
        if now - self._dropped_logged >= DROP_LOG_INTERVAL:  # a flood is one line a minute
            self._dropped_logged = now
            log.warning(
                "too many connections in their handshake: dropping the oldest",
                extra={"max_handshakes": cap, "dropped_total": self._dropped},
            )
        if conn.session is not None:
            conn.session.drop(
                LIMIT_EXCEEDED,
                f"dropped: more than {cap} connections were waiting for their hello",
            )
        else:  # in its TLS handshake, or about to start it: see _start_tls
            conn.writer.transport.abort()

    def _greet(self, conn: _Conn) -> bool:
        """A session completed hello; False if it was dropped meanwhile."""
        if conn.evicted or conn not in self._pending:
            return False
        del self._pending[conn]
        self._greeted.add(conn)
        return True

    async def _start_tls(self, conn: _Conn, ctx: ssl.SSLContext, deadline: float) -> bool:
        """The TLS handshake, within what is left of the handshake timeout; False if
        it failed or the connection was dropped (aborted) meanwhile."""
        writer = conn.writer
        # Connections are accepted in batches (up to the listen backlog at once);
        # one turn of the loop lets the newer ones of a batch drop the older ones
        # before these allocate their TLS state (~300 KiB each).
        await asyncio.sleep(0)
        if conn.evicted or writer.transport.is_closing():
            return False
        loop = asyncio.get_running_loop()
        try:
            upgraded = await start_tls(writer, ctx, max(0.001, deadline - loop.time()))
        except (OSError, EOFError, asyncio.TimeoutError) as exc:
            peer = str(writer.get_extra_info("peername") or "local")
            log.info("TLS handshake failed: %s", exc or type(exc).__name__, extra={"peer": peer})
            writer.transport.abort()
            return False
        return upgraded and not conn.evicted

    def hello(self, req: dict[str, Any], token: str | None) -> dict[str, Any]:
        """The handshake's result; raises the handshake errors."""
        if token is not None:
            given = req.get("token")
            if not isinstance(given, str) or not hmac.compare_digest(
                given.encode(), token.encode()
            ):
                raise AgentError(UNAUTHORIZED, "missing or wrong token")
        versions = req.get("versions")
        if not isinstance(versions, list):
            raise AgentError(INVALID, "hello needs versions, a list of protocol versions")
        common = [v for v in SUPPORTED_VERSIONS if v in versions]
        if not common:
            raise AgentError(
                UNSUPPORTED_VERSION,
                f"no common protocol version: agent {list(SUPPORTED_VERSIONS)}, client {versions}",
            )
        return self._hello_result(max(common))

    def _hello_result(self, version: int) -> dict[str, Any]:
        backends = list(self.supervisor.backends)
        capabilities = ["tty", "stdin", "signal", "resize", "stream"]
        if "runc" in backends:
            capabilities.append("containers")
        return {
            "version": version,
            "agent": AGENT_NAME,
            "agent_version": AGENT_VERSION,
            "boot_id": self.boot_id,
            "max_frame": self.options.max_frame,
            "capabilities": capabilities,
            "backends": backends,
            "hostname": socket.gethostname(),
        }

    async def aclose(self, grace: float | None = None) -> None:
        """Stop: execs get ``grace`` seconds, then are killed and reported; close connections."""
        if self._closed:
            return
        self._closed = True
        self._reclaimer.close()
        for conn in list(self._pending):  # never authenticated: nothing to tell them
            if conn.session is None:
                conn.writer.transport.abort()
        await self.supervisor.shutdown(self.options.grace if grace is None else grace)
        for conn in list(self._conns):
            if conn.session is not None:
                conn.session.close()  # after the exit events queued above are sent
        if self._conns:
            await asyncio.wait([c.done for c in self._conns], timeout=_SESSION_CLOSE_WAIT)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()
