"""A TCP fault proxy for tests: forward, cut every connection, black-hole, slow down.

Runs in its own thread with its own event loop, so it can sit between
subprocesses (workers) and RabbitMQ or a TCP agent while the test's loop
does other things.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any


class FaultProxy:
    """``listen_port`` -> ``target``; control methods are thread-safe."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.delay = 0.0
        self.blackhole = False
        self.cuts = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._refuse = False

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        await self._cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- controls --------------------------------------------------------

    def cut(self) -> None:
        """Reset every open connection (new ones are accepted)."""
        self.cuts += 1
        self._call(self._cut())

    def set_blackhole(self, on: bool) -> None:
        """Stop forwarding bytes (connections stay open, data vanishes)."""
        self.blackhole = on

    def set_refuse(self, on: bool) -> None:
        """Close new connections at once."""
        self._refuse = on

    def set_delay(self, seconds: float) -> None:
        """Delay every forwarded chunk."""
        self.delay = seconds

    def connections(self) -> int:
        """Connections forwarded right now."""
        return len(self._conns)

    # -- forwarding ------------------------------------------------------

    async def _cut(self) -> None:
        for a, b in list(self._conns):
            for w in (a, b):
                with contextlib.suppress(Exception):
                    w.transport.abort()
        self._conns.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refuse:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._conns.add(pair)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        self._conns.discard(pair)
        for w in pair:
            with contextlib.suppress(Exception):
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.blackhole:
                continue
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(Exception):
            writer.write_eof()
