"""The ownership lease against a scripted channel: bounded calls, one session at a time.

The broker itself is exercised by the scale-out and fault tests; these pin the
cases a real broker produces only under load: a call that never returns on a
connection that died (aiormq waits forever to write to it), a token that
arrives before the consume call returns, a session that ends mid-way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from execbus.settings import Settings
from execbus.worker import lease as lease_module
from execbus.worker.lease import Lease
from execbus.worker.topology import topology_of


@dataclass
class Declared:
    message_count: int = 1
    consumer_count: int = 1


class ScriptedQueue:
    def __init__(self, channel: ScriptedChannel) -> None:
        self.channel = channel
        self.declaration_result = Declared(*channel.declared)

    async def consume(self, callback: Any, no_ack: bool = False) -> str:
        for token in self.channel.deliver_during_consume:
            await callback(token)
        return "ctag-1"

    async def cancel(self, tag: str) -> None:
        self.channel.cancelled.append(tag)


class ScriptedExchange:
    def __init__(self, channel: ScriptedChannel) -> None:
        self.channel = channel

    async def publish(self, message: Any, routing_key: str, timeout: float | None = None) -> None:
        if self.channel.publish_hangs:
            await asyncio.Event().wait()  # a write to a connection that died
        self.channel.published.append(routing_key)


@dataclass
class ScriptedChannel:
    declared: tuple[int, int] = (1, 1)
    publish_hangs: bool = False
    deliver_during_consume: list[Any] = field(default_factory=list)
    published: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    close_callbacks: set[Any] = field(default_factory=set)
    is_closed: bool = False

    def __post_init__(self) -> None:
        self.default_exchange = ScriptedExchange(self)

    async def set_qos(self, prefetch_count: int) -> None:
        pass

    async def declare_queue(self, name: str, **_: Any) -> ScriptedQueue:
        return ScriptedQueue(self)

    async def close(self) -> None:
        self.is_closed = True


class ScriptedSession:
    def __init__(self, channel: ScriptedChannel) -> None:
        self._channel = channel
        self.closed = asyncio.Event()

    async def channel(self, publisher_confirms: bool = False) -> ScriptedChannel:
        return self._channel


class Token:
    def __init__(self) -> None:
        self.nacked = False

    async def nack(self, requeue: bool = True) -> None:
        self.nacked = True


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lease_module, "CALL_TIMEOUT", 0.2)


def make_lease(granted: list[str]) -> Lease:
    topology = topology_of(Settings(namespace="t"))
    return Lease(topology, "a1", lambda: granted.append("granted"), lambda: None)


async def test_a_call_that_never_returns_does_not_keep_the_agent_out_of_line_for_good() -> None:
    granted: list[str] = []
    lease = make_lease(granted)
    dead = ScriptedChannel(declared=(0, 0), publish_hangs=True)  # new queue: mint hangs
    await asyncio.wait_for(lease.subscribe(cast(Any, ScriptedSession(dead))), 2)
    assert not lease.subscribed
    assert dead.is_closed
    lease.forget()  # the session ended; the next one gets in line
    healthy = ScriptedChannel()
    await asyncio.wait_for(lease.subscribe(cast(Any, ScriptedSession(healthy))), 2)
    assert lease.subscribed


async def test_a_token_delivered_before_consume_returns_is_granted_once_in_line() -> None:
    granted: list[str] = []
    lease = make_lease(granted)
    token = Token()
    channel = ScriptedChannel(deliver_during_consume=[token])
    await lease.subscribe(cast(Any, ScriptedSession(channel)))
    assert lease.subscribed and lease.held
    assert granted == ["granted"]
    assert not token.nacked


async def test_a_second_token_is_given_back() -> None:
    granted: list[str] = []
    lease = make_lease(granted)
    first, second = Token(), Token()
    channel = ScriptedChannel(deliver_during_consume=[first, second])
    await lease.subscribe(cast(Any, ScriptedSession(channel)))
    assert granted == ["granted"]
    assert second.nacked and not first.nacked


async def test_a_session_that_ends_while_getting_in_line_voids_the_attempt() -> None:
    granted: list[str] = []
    lease = make_lease(granted)
    token = Token()
    channel = ScriptedChannel(deliver_during_consume=[token])
    original = channel.declare_queue

    async def declare_then_session_ends(name: str, **kw: Any) -> ScriptedQueue:
        lease.forget()  # the connection died while we were declaring
        return await original(name, **kw)

    channel.declare_queue = declare_then_session_ends  # type: ignore[method-assign]
    await lease.subscribe(cast(Any, ScriptedSession(channel)))
    assert not lease.subscribed and not lease.held
    assert granted == []
    assert channel.is_closed  # closing the channel gives the token back


async def test_release_gives_the_token_back_and_leaves_the_line() -> None:
    granted: list[str] = []
    lease = make_lease(granted)
    token = Token()
    channel = ScriptedChannel(deliver_during_consume=[token])
    await lease.subscribe(cast(Any, ScriptedSession(channel)))
    await lease.release()
    assert channel.cancelled == ["ctag-1"]
    assert token.nacked and channel.is_closed
    assert not lease.subscribed and not lease.held
