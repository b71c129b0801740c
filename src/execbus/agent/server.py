"""The agent core (connections and execs) and the listeners that feed it.

:class:`AgentCore` serves connections handed to it and owns the execs; it
assumes nothing about the event loop, signals or sockets, so a worker can
embed it and talk to it over one end of a ``socket.socketpair()``.
:class:`AgentServer` accepts connections on Unix, TCP and vsock listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import socket
import ssl
import uuid
from collections.abc import Sequence
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
from execbus.agent.options import AgentOptions
from execbus.agent.protocol import PROTOCOL_VERSION, encode_frame
from execbus.agent.session import Session
from execbus.agent.supervisor import Supervisor

__all__ = ["AgentCore", "AgentOptions", "AgentServer"]

log = logging.getLogger(__name__)

AGENT_NAME = "execbus-agent"
AGENT_VERSION = "0.1.0"
SUPPORTED_VERSIONS = (PROTOCOL_VERSION,)
_SESSION_CLOSE_WAIT = 5.0


class AgentCore:
    """The agent without its listeners: serves connections, owns the execs."""

    def __init__(self, options: AgentOptions | None = None) -> None:
        self.options = options or AgentOptions()
        self.boot_id = uuid.uuid4().hex
        self.supervisor = Supervisor(self.options)
        self._sessions: dict[Session, asyncio.Future[None]] = {}
        self._closed = False

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
    ) -> None:
        """Serve one connection until it closes. ``token``: what hello must carry."""
        if self._closed:
            await _close(writer)
            return
        if len(self._sessions) >= self.options.max_connections:
            peer = str(writer.get_extra_info("peername") or "local")
            log.warning(
                "connection refused: too many connections",
                extra={"peer": peer, "max_connections": self.options.max_connections},
            )
            message = f"the agent serves at most {self.options.max_connections} connections"
            error = {"code": LIMIT_EXCEEDED, "message": message}
            with contextlib.suppress(OSError):
                writer.write(encode_frame({"re": None, "ok": False, "error": error}))
            await _close(writer)
            return
        session = Session(self, reader, writer, token)
        done = asyncio.get_running_loop().create_future()
        self._sessions[session] = done
        self.metrics.connection_opened()
        try:
            await session.serve()
        finally:
            self.metrics.connection_closed()
            del self._sessions[session]
            done.set_result(None)

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
        await self.supervisor.shutdown(self.options.grace if grace is None else grace)
        for session in list(self._sessions):
            session.close()  # after the exit events queued above are sent
        if self._sessions:
            await asyncio.wait(list(self._sessions.values()), timeout=_SESSION_CLOSE_WAIT)


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
            server = await asyncio.start_server(
                on_connect,
                spec.address,
                spec.port,
                ssl=self._tls_context(spec),
                ssl_handshake_timeout=options.handshake_timeout,
            )
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
