"""A tiny HTTP endpoint: ``/healthz`` (alive), ``/readyz`` (broker + agents), ``/metrics``.

Standard library only (asyncio streams), so the agent can use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

Status = Callable[[], tuple[bool, dict[str, Any]]]
Metrics = Callable[[], bytes]


class HealthServer:
    """Serves health, readiness and metrics on one port."""

    def __init__(self, host: str, port: int, status: Status, metrics: Metrics | None) -> None:
        self.host = host
        self.port = port
        self._status = status
        self._metrics = metrics
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                line = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            parts = line.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else "/"
            status, ctype, body = self._route(path.split("?")[0])
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    def _route(self, path: str) -> tuple[str, str, bytes]:
        if path == "/healthz":
            return "200 OK", "application/json", b'{"status":"alive"}'
        if path == "/readyz":
            ready, detail = self._status()
            body = json.dumps({"ready": ready, **detail}).encode()
            return ("200 OK" if ready else "503 Service Unavailable"), "application/json", body
        if path == "/metrics" and self._metrics is not None:
            return "200 OK", "text/plain; version=0.0.4", self._metrics()
        return "404 Not Found", "text/plain", b"not found\n"
