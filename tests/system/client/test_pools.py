"""Pool targets in the SDK: runs sent to a pool, against a real broker and real workers.

One worker serves two in-process agents, ``a1`` and ``a2``, and the pool
``p = a1 + a2``; the worker places each pool request on the least-loaded one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from execbus import Client
from execbus.client.target import PoolTarget
from execbus.errors import CommandNotFound, InvalidRequest, UnknownAgent
from execbus.wire.ids import new_exec_id
from tests.system.client.test_failover import CuttableProxy

pytestmark = pytest.mark.integration

POOL_AGENTS = {"a1", "a2"}


def wait_pool(worker: Any, pool: str, timeout: float = 15.0) -> None:
    """Wait until ``worker`` consumes ``pool``'s queue."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pools = (worker.readyz() or {}).get("pools") or {}
        if pools.get(pool):
            return
        time.sleep(0.05)
    raise AssertionError(f"the worker does not consume pool {pool!r}:\n{worker.log()}")


@pytest.fixture
def pool_worker(start_worker: Any) -> Any:
    """A real worker with agents a1 and a2 (in-process) and the pool p of both."""
    worker = start_worker("--agent", "a1=local", "--agent", "a2=local", "--pool", "p=a1+a2")
    worker.wait_owner("a1")
    worker.wait_owner("a2")
    wait_pool(worker, "p")
    return worker


@pytest.fixture
async def client(amqp_url: str, namespace: str, pool_worker: Any) -> AsyncIterator[Client]:
    async with Client(amqp_url, namespace=namespace) as connected:
        yield connected


async def test_pool_run_returns_output_and_names_the_agent(client: Client) -> None:
    result = await client.run(None, ["sh", "-c", "echo hi; echo err >&2; exit 3"], pool="p")
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"hi\n", b"err\n")
    assert result.agent in POOL_AGENTS
    assert result.info is not None and result.info.agent == result.agent
    info = await client.inspect(result.agent, result.exec_id)  # later calls go to the agent
    assert info.exit is not None and info.exit.exit_code == 3


async def test_concurrent_pool_runs_spread_over_the_agents(client: Client) -> None:
    cmd = ["sh", "-c", "sleep 0.5; echo ok"]
    results = await asyncio.gather(*(client.run(None, cmd, pool="p") for _ in range(8)))
    assert all(r.stdout == b"ok\n" for r in results)
    agents = [r.agent for r in results]
    assert set(agents) == POOL_AGENTS, agents


async def test_unknown_pool_fails_fast(client: Client) -> None:
    started = time.monotonic()
    with pytest.raises(UnknownAgent, match="no worker serves pool 'nope'"):
        await client.run(None, ["true"], pool="nope")
    assert time.monotonic() - started < 3
    with pytest.raises(UnknownAgent, match="invalid pool name"):
        await client.check_pool("no such pool")


async def test_exactly_one_of_agent_and_pool(client: Client) -> None:
    with pytest.raises(InvalidRequest, match="not both"):
        await client.run("a1", ["true"], pool="p")
    with pytest.raises(InvalidRequest, match="no agent and no pool"):
        await client.run(None, ["true"])
    with pytest.raises(InvalidRequest, match="not both"):
        await client.submit("a1", ["true"], pool="p")
    with pytest.raises(InvalidRequest, match="no agent and no pool"):
        await client.create(None, ["true"])


async def test_submitted_pool_run_learns_its_agent(client: Client) -> None:
    execution = await client.submit(None, ["cat"], pool="p", attach_stdin=True)
    assert execution.pool == "p"
    agent = await execution.placed()  # from the exec.created event, before the exit
    assert agent in POOL_AGENTS
    assert execution.agent == agent
    assert (await execution.inspect()).agent == agent
    await execution.write_stdin(b"to the pool", close=True)
    result = await execution.result()
    assert (result.stdout, result.agent) == (b"to the pool", agent)


async def test_pool_run_with_stdin(client: Client) -> None:
    result = await client.run(None, ["cat"], pool="p", stdin=b"x" * 100_000)
    assert result.stdout == b"x" * 100_000
    assert result.agent in POOL_AGENTS


async def test_signal_reaches_a_pool_run(client: Client) -> None:
    execution = await client.submit(None, ["sleep", "30"], pool="p")
    while (await execution.inspect()).state != "running":  # started (inspect round trips)
        pass
    await execution.signal("TERM")
    result = await asyncio.wait_for(execution.result(), 10)
    assert (result.exit_code, result.signal) == (143, "SIGTERM")
    assert result.agent == execution.agent


async def test_pool_create_then_start_on_the_agent(client: Client) -> None:
    info = await client.create(None, ["echo", "created"], pool="p")
    assert info.agent in POOL_AGENTS
    result = await client.start(info.agent, info.exec_id)
    assert (result.stdout, result.agent) == (b"created\n", info.agent)


async def test_detached_pool_run(client: Client) -> None:
    info = await client.run(None, ["sh", "-c", "sleep 0.2; echo late"], pool="p", detach=True)
    assert info.agent in POOL_AGENTS
    done = await client.wait(info.agent, info.exec_id, timeout=10)
    assert done.exit is not None and done.exit.stdout == b"late\n"


async def test_output_of_a_pool_run_streams(client: Client) -> None:
    exec_id = new_exec_id()
    async with client.output(None, exec_id, existing=False) as stream:
        cmd = ["sh", "-c", "echo one; echo two >&2; echo three"]
        execution = await client.submit(None, cmd, pool="p", exec_id=exec_id, stream_output=True)
        chunks = [chunk async for chunk in stream]
    result = await execution.result()
    out = b"".join(c.data for c in chunks if c.stream == "stdout")
    err = b"".join(c.data for c in chunks if c.stream == "stderr")
    assert (out, err) == (b"one\nthree\n", b"two\n")
    assert {c.agent for c in chunks} == {result.agent}
    with pytest.raises(InvalidRequest, match="needs its agent"):
        client.output(None, exec_id)


async def test_pool_start_failure_raises_the_typed_error(client: Client) -> None:
    with pytest.raises(CommandNotFound) as caught:
        await client.run(None, ["/no/such/program"], pool="p")
    assert caught.value.exit_code == 127


async def test_recheck_finds_a_run_placed_while_away(client: Client) -> None:
    """After a reconnect, a pool run whose placement was missed is looked up on the
    agents of the workers serving the pool."""
    exec_id = new_exec_id()
    await client.run("a2", ["echo", "ran"], exec_id=exec_id)  # what the pool did meanwhile
    exits = client._require().exits
    watch = await exits.watch(PoolTarget("p"), exec_id)
    assert client._recovery is not None
    try:
        await asyncio.wait_for(client._recovery.recheck(), 20)
        assert watch.agent == "a2"
        assert await asyncio.wait_for(watch.placed, 1) == "a2"
        final = await asyncio.wait_for(watch.future, 1)
        assert final.exec_id == exec_id
    finally:
        exits.unwatch(watch)


@pytest.fixture
async def proxied_url(amqp_url: str) -> AsyncIterator[tuple[CuttableProxy, str]]:
    parts = urlsplit(amqp_url)
    server = CuttableProxy(parts.hostname or "localhost", parts.port or 5672)
    port = await server.start()
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{port}"
    yield server, parts._replace(netloc=netloc).geturl()
    with contextlib.suppress(Exception):
        await server.close()


@pytest.mark.faults
async def test_pool_run_completes_after_a_reconnect(
    namespace: str, pool_worker: Any, proxied_url: tuple[CuttableProxy, str]
) -> None:
    server, url = proxied_url
    async with Client(url, namespace=namespace) as client:
        execution = await client.submit(None, ["sh", "-c", "sleep 1; echo done"], pool="p")
        agent = await asyncio.wait_for(execution.placed(), 5)
        server.cut()  # the reply and the exit event are published while we are away
        await asyncio.sleep(1.5)
        server.restore()
        result = await asyncio.wait_for(execution.result(), 20)
    assert (result.exit_code, result.stdout, result.agent) == (0, b"done\n", agent)
