"""The agent's listeners: Unix, TCP, TLS and vsock sockets feeding an agent core.

:class:`AgentServer` binds the listeners (all or none), accepts connections
and hands each to :meth:`execbus.agent.core.AgentCore.handle_stream`; it
decides which of them need the token and builds the TLS context. Stopping it
stops accepting; the connections it accepted stay until the core closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Sequence
from typing import Any

from execbus.agent.core import AgentCore
from execbus.agent.listeners import ListenerSpec, bind_unix, bind_vsock, server_tls_context
from execbus.agent.starttls import PausedStreamProtocol

__all__ = ["AgentServer"]

log = logging.getLogger(__name__)

STREAM_LIMIT = 64 * 1024  # asyncio.start_server's default


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
                return PausedStreamProtocol(reader, on_tls_connect, loop=loop)

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
