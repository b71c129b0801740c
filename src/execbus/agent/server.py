"""The agent core (connections and execs) and the listeners that feed it.

:class:`AgentCore` serves connections handed to it and owns the execs; it
assumes nothing about the event loop, signals or sockets, so a worker can
embed it and talk to it over one end of a ``socket.socketpair()``.
:class:`AgentServer` accepts connections on Unix, TCP and vsock listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import socket
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from execbus.agent.errors import (
    INVALID,
    LIMIT_EXCEEDED,
    UNAUTHORIZED,
    UNSUPPORTED_VERSION,
    AgentError,
)
from execbus.agent.listeners import ListenerSpec, bind_unix, bind_vsock, server_tls_context
from execbus.agent.metrics import AgentMetrics
from execbus.agent.options import AgentOptions, handshake_cap
from execbus.agent.protocol import PROTOCOL_VERSION, encode_frame
from execbus.agent.session import Session
from execbus.agent.supervisor import Supervisor

__all__ = ["AgentCore", "AgentOptions", "AgentServer"]

log = logging.getLogger(__name__)

AGENT_NAME = "execbus-agent"
AGENT_VERSION = "0.1.0"
SUPPORTED_VERSIONS = (PROTOCOL_VERSION,)
_SESSION_CLOSE_WAIT = 5.0
# After unauthenticated connections end, how soon their memory is reclaimed.
RECLAIM_DELAY = 1.0
RECLAIM_EVERY = 16
DROP_LOG_INTERVAL = 60.0
STREAM_LIMIT = 64 * 1024  # asyncio.start_server's default


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
        self.options = options or AgentOptions()
        self.boot_id = uuid.uuid4().hex
        self.supervisor = Supervisor(self.options)
        self._pending: dict[_Conn, None] = {}  # not greeted yet, oldest first
        self._greeted: set[_Conn] = set()
        self._conns: set[_Conn] = set()  # every connection still open
        self._closed = False
        self._reclaim: asyncio.TimerHandle | None = None
        self._unreclaimed = 0
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
                self._reclaim_soon()
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

    def _reclaim_soon(self) -> None:
        """After unauthenticated connections end, give their memory back: a TLS
        connection leaves reference cycles holding its buffers (~300 KiB), and the
        allocator keeps freed memory. Every RECLAIM_EVERY such connections the
        young cycles are collected (so a flood's memory stays bounded), and once
        the flood is over everything is collected and the heap trimmed."""
        self._unreclaimed += 1
        if self._unreclaimed >= RECLAIM_EVERY:
            self._unreclaimed = 0
            gc.collect(1)
        if self._reclaim is None:
            loop = asyncio.get_running_loop()
            self._reclaim = loop.call_later(RECLAIM_DELAY, self._do_reclaim)

    def _do_reclaim(self) -> None:
        self._reclaim = None
        self._unreclaimed = 0
        if not self._closed:
            reclaim_memory()

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
        if self._reclaim is not None:
            self._reclaim.cancel()
            self._reclaim = None
        for conn in list(self._pending):  # never authenticated: nothing to tell them
            if conn.session is None:
                conn.writer.transport.abort()
        await self.supervisor.shutdown(self.options.grace if grace is None else grace)
        for conn in list(self._conns):
            if conn.session is not None:
                conn.session.close()  # after the exit events queued above are sent
        if self._conns:
            await asyncio.wait([c.done for c in self._conns], timeout=_SESSION_CLOSE_WAIT)


async def start_tls(writer: asyncio.StreamWriter, ctx: ssl.SSLContext, timeout: float) -> bool:
    """Upgrade a server-side stream to TLS; False if the connection was closed (aborted)
    during the handshake. Raises OSError (ssl.SSLError) for a failed handshake.

    ``StreamWriter.start_tls`` (3.11+) is not used: it fails with AttributeError
    when the connection is aborted during the handshake.
    """
    loop = asyncio.get_running_loop()
    transport = writer.transport
    protocol = transport.get_protocol()
    new = await loop.start_tls(
        transport, protocol, ctx, server_side=True, ssl_handshake_timeout=timeout
    )
    if new is None:  # aborted: the TLS protocol lost its transport
        return False
    # What StreamWriter.start_tls does once the handshake is done.
    writer._transport = new  # type: ignore[attr-defined]
    replace_writer = getattr(protocol, "_replace_writer", None)
    if replace_writer is not None:  # 3.11+
        replace_writer(writer)
    else:
        setattr(protocol, "_transport", new)  # noqa: B010
        setattr(protocol, "_over_ssl", True)  # noqa: B010
    return True


class _PausedStreamProtocol(asyncio.StreamReaderProtocol):
    """A stream whose transport reads nothing until TLS takes it over.

    The client's TLS hello would otherwise be read into the stream before
    ``start_tls`` (which resumes reading itself) could see it.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.ReadTransport):
            transport.pause_reading()
        super().connection_made(transport)


def reclaim_memory() -> None:
    """Collect reference cycles and hand free heap memory back to the system (glibc)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_TRIM: list[Callable[[int], int] | None] = []


def _malloc_trim() -> Callable[[int], int] | None:
    if not _TRIM:
        fn: Callable[[int], int] | None = None
        with contextlib.suppress(Exception):  # no ctypes, or not glibc
            import ctypes

            fn = ctypes.CDLL(None).malloc_trim
        _TRIM.append(fn)
    return _TRIM[0]


class AgentServer:
    """Accepts connections on listeners and hands them to an :class:`AgentCore`.

    TCP and TLS listeners always require ``token``; vsock listeners require it
    when one is given; Unix sockets rely on their file mode (``socket_mode``)
    and owner/group (``options.socket_owner``/``socket_group``). TLS listeners
    use ``options.tls_cert``/``tls_key``, and require client certificates
    signed by ``options.tls_client_ca`` when it is set (mutual TLS).
    """

    def __init__(
        self,
        core: AgentCore,
        listeners: Sequence[ListenerSpec],
        *,
        socket_mode: int = 0o600,
        token: str | None = None,
    ) -> None:
        self.core = core
        self.listeners = list(listeners)
        self.socket_mode = socket_mode
        self.token = token
        self.addresses: list[str] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._unix_paths: list[tuple[str, int]] = []

    @property
    def serving(self) -> bool:
        """True while every listener is bound and accepting connections."""
        return bool(self._servers) and all(s.is_serving() for s in self._servers)

    async def start(self) -> None:
        """Bind every listener (all or none); raises OSError or ValueError."""
        try:
            for spec in self.listeners:
                await self._start_one(spec)
        except BaseException:
            await self.stop()
            raise

    async def _start_one(self, spec: ListenerSpec) -> None:
        token = self._token_for(spec)

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self.core.handle_stream(reader, writer, token=token)

        options = self.core.options
        if spec.kind == "unix":
            sock = bind_unix(
                spec.address, self.socket_mode, options.socket_owner, options.socket_group
            )
            self._unix_paths.append((spec.address, os.stat(spec.address).st_ino))
            server = await asyncio.start_unix_server(on_connect, sock=sock)
        elif spec.kind == "tcp":
            server = await asyncio.start_server(on_connect, spec.address, spec.port)
        elif spec.kind == "tls":
            # Accepted as plain TCP and upgraded by the core, so that a connection
            # counts against the limits from its first byte (TLS included).
            ctx = self._tls_context(spec)
            loop = asyncio.get_running_loop()

            async def on_tls_connect(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter
            ) -> None:
                await self.core.handle_stream(reader, writer, token=token, tls=ctx)

            def factory() -> asyncio.StreamReaderProtocol:
                reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
                return _PausedStreamProtocol(reader, on_tls_connect, loop=loop)

            server = await loop.create_server(factory, spec.address, spec.port)
        else:
            server = await asyncio.start_server(
                on_connect, sock=bind_vsock(int(spec.address), spec.port)
            )
        self._servers.append(server)
        self.addresses.extend(_addresses(spec, server))
        extra: dict[str, Any] = {"listen": spec.url, "auth": token is not None}
        if spec.kind == "tls":
            extra["mtls"] = options.tls_client_ca is not None
        log.info("listening", extra=extra)

    def _token_for(self, spec: ListenerSpec) -> str | None:
        if spec.kind in ("tcp", "tls") and not self.token:
            raise ValueError(f"the {spec.kind} listener {spec.url} needs a token (--token-file)")
        return self.token if spec.kind in ("tcp", "tls", "vsock") else None

    def _tls_context(self, spec: ListenerSpec) -> ssl.SSLContext:
        options = self.core.options
        if not options.tls_cert:
            raise ValueError(f"the tls listener {spec.url} needs --tls-cert (and --tls-key)")
        try:
            return server_tls_context(options.tls_cert, options.tls_key, options.tls_client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"cannot load the TLS certificate, key or client CA for {spec.url}: {exc}"
            ) from None

    async def stop(self) -> None:
        """Stop accepting; established connections stay until the core closes."""
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for path, inode in self._unix_paths:
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == inode:  # never remove a successor's socket
                    os.unlink(path)
        self._unix_paths.clear()


def _addresses(spec: ListenerSpec, server: asyncio.base_events.Server) -> list[str]:
    if spec.kind not in ("tcp", "tls"):
        return [spec.url]
    urls = []
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        urls.append(ListenerSpec(spec.kind, host, port).url)
    return urls


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()
