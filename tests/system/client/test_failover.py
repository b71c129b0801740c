"""A pending ``run`` survives the death of its worker and a cut broker connection."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from execbus import Client
from execbus.wire.ids import new_exec_id

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def owner_of(workers: list[Any], agent: str, timeout: float = 15.0) -> Any:
    """The worker that owns ``agent`` and is connected to it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in workers:
            info = ((worker.readyz() or {}).get("agents") or {}).get(agent) or {}
            if info.get("owner") and info.get("connected"):
                return worker
        time.sleep(0.05)
    raise AssertionError(f"nobody owns {agent!r}")


async def wait_started(client: Client, sub: Any, exec_id: str) -> None:
    async with asyncio.timeout(10):
        async for event in sub:
            if event.exec_id == exec_id:
                return


async def test_run_survives_the_death_of_its_worker(
    amqp_url: str, namespace: str, start_agent: Any, start_worker: Any, tmp_path: Path
) -> None:
    agent = start_agent("a1")
    workers = [start_worker("--agent", f"a1={agent.address}") for _ in range(2)]
    owner = owner_of(workers, "a1")
    marker = tmp_path / "ran"
    exec_id = new_exec_id()
    async with Client(amqp_url, namespace=namespace) as client:
        async with client.events("a1", kind="started") as started, client.events("a1") as events:
            cmd = ["sh", "-c", f"echo x >> {marker}; sleep 2; echo done"]
            run = asyncio.ensure_future(client.run("a1", cmd, exec_id=exec_id))
            await wait_started(client, started, exec_id)
            owner.kill()
            result = await asyncio.wait_for(run, 30)
            seen = [e async for e in _until_exited(events, exec_id)]
    assert (result.exit_code, result.stdout) == (0, b"done\n")
    assert marker.read_text() == "x\n", "the command ran exactly once"
    assert [e.type for e in seen].count("exec.exited") == 1


async def _until_exited(events: Any, exec_id: str) -> AsyncIterator[Any]:
    async with asyncio.timeout(10):
        async for event in events:
            if event.exec_id == exec_id:
                yield event
                if event.type == "exec.exited":
                    return


class CuttableProxy:
    """A TCP proxy to the broker whose connections can be cut (and new ones refused)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.server: asyncio.Server | None = None
        self.open = True
        self.writers: set[asyncio.StreamWriter] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer)),
            asyncio.ensure_future(self._pump(up_reader, writer)),
        ]
        self.tasks.update(pumps)
        await asyncio.gather(*pumps, return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    def cut(self) -> None:
        """Drop every connection and refuse new ones until :meth:`restore`."""
        self.open = False
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    def restore(self) -> None:
        self.open = True

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
async def proxy(amqp_url: str) -> AsyncIterator[tuple[CuttableProxy, str]]:
    parts = urlsplit(amqp_url)
    server = CuttableProxy(parts.hostname or "localhost", parts.port or 5672)
    port = await server.start()
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{port}"
    yield server, parts._replace(netloc=netloc).geturl()
    await server.close()


async def test_run_completes_after_a_reconnect(
    namespace: str, start_worker: Any, proxy: tuple[CuttableProxy, str]
) -> None:
    server, proxied_url = proxy
    start_worker().wait_owner("local")
    async with Client(proxied_url, namespace=namespace) as client:
        run = asyncio.ensure_future(client.run("local", ["sh", "-c", "sleep 1; echo done"]))
        await asyncio.sleep(0.3)
        server.cut()  # the reply and the exit event are published while we are away
        await asyncio.sleep(1.5)
        server.restore()
        result = await asyncio.wait_for(run, 20)
    assert (result.exit_code, result.stdout) == (0, b"done\n")
    with contextlib.suppress(Exception):
        await server.close()
