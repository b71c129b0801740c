"""The agent's HTTP endpoint: ``/healthz`` (alive), ``/readyz`` (serving), ``/metrics``.

Standard library only (asyncio streams), enabled by ``execbus agent
--http-port``. It is for probes and Prometheus scrapes: plain HTTP/1.1,
one request per connection, no authentication — bind it to a loopback or
an internal address (the default is 127.0.0.1).

* ``/healthz`` — 200 while the event loop runs.
* ``/readyz`` — 200 while every listener accepts connections and the agent
  is not shutting down, else 503; a JSON body says why.
* ``/metrics`` — the counters of :class:`execbus.agent.metrics.AgentMetrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from execbus.agent import compat
from execbus.agent.metrics import CONTENT_TYPE

Status = Callable[[], tuple[bool, dict[str, Any]]]
Metrics = Callable[[], bytes]

READ_TIMEOUT = 5.0
MAX_HEADER_LINES = 100


class HealthServer:
    """Serves health, readiness and metrics on one TCP port."""

    def __init__(self, host: str, port: int, status: Status, metrics: Metrics) -> None:
        self.host = host
        self.port = port
        self._status = status
        self._metrics = metrics
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; returns the bound port (useful with port 0). Raises OSError."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with compat.timeout(READ_TIMEOUT):
                request_line = await reader.readline()
                for _ in range(MAX_HEADER_LINES):
                    if (await reader.readline()) in (b"\r\n", b"\n", b""):
                        break
            parts = request_line.decode("latin-1").split()
            method = parts[0] if parts else ""
            path = parts[1].split("?")[0] if len(parts) >= 2 else "/"
            status, ctype, body = self._route(method, path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError, OSError, ValueError):
            pass  # slow, broken or oversized (ValueError: a line above 64 KiB) requests
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"method not allowed\n"
        if path == "/healthz":
            return "200 OK", "application/json", b'{"status":"alive"}'
        if path == "/readyz":
            ready, detail = self._status()
            body = json.dumps({"ready": ready, **detail}).encode()
            return ("200 OK" if ready else "503 Service Unavailable"), "application/json", body
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE, self._metrics()
        return "404 Not Found", "text/plain", b"not found\n"
