"""The SDK's publishing channel is replaced after a nack or a close (``client/session.py``,
``publishing.ConfirmChannel``), against the in-memory broker of ``execbus.testing.amqp``.

RabbitMQ 3.10: a channel whose first publish to a quorum queue found the queue's
recorded leader down is nacked for that queue until that node is back; only a
fresh channel reaches the queue's new leader (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.exceptions import DeliveryError

from execbus.client.config import model
from execbus.client.rpc import Rpc
from execbus.client.session import Session
from execbus.client.target import AgentTarget
from execbus.errors import PublishFailed
from execbus.publishing import Basic, ConfirmChannel
from execbus.testing.amqp import FakeChannel, FakeConfirmBroker
from execbus.wire.requests import InspectRequest
from execbus.wire.routing import Names

A1 = "agent.a1"


async def session_of(broker: FakeConfirmBroker, publish_timeout: float = 1.0) -> Session:
    """A client session over the fake connection (its inbox is never opened)."""
    connection = cast(AbstractRobustConnection, broker.connection)
    inbox = await broker.open()
    publishing = await broker.open()
    return Session(
        connection,
        Names("t"),
        inbox,
        publishing,
        user="guest",
        publish_timeout=publish_timeout,
        request_timeout=None,
    )


async def inspect(rpc: Rpc, agent: str = "a1") -> None:
    """Publish one request (confirmed) and stop waiting for its reply."""
    request = model(InspectRequest, agent=agent, exec_id="e1")
    rpc.discard(await rpc.send(AgentTarget(agent), request))


def channel(broker: FakeConfirmBroker, number: int) -> FakeChannel:
    return broker.channels[number - 1]


async def test_a_nacked_request_replaces_the_channel_and_the_retry_is_served() -> None:
    broker = FakeConfirmBroker()
    session = await session_of(broker)  # channel 1: the inbox's, 2: the publishing one
    broker.leader_down.add(A1)
    with pytest.raises(PublishFailed, match="nacked by the broker"):
        await inspect(session.rpc)
    broker.leader_down.clear()  # a leader again: channel 2 would still be refused
    await inspect(session.rpc)
    assert [(n, key) for n, _, key, _ in broker.published] == [(3, A1)]
    await session.rpc.channel.retired()
    assert channel(broker, 2).closed_by == "client"
    assert channel(broker, 1).closed_by is None  # the inbox's is left alone


async def test_without_the_replacement_the_channel_stays_refused() -> None:
    """What the SDK suffered before: the same channel, nacked after the queue's leader is back."""
    broker = FakeConfirmBroker()
    publishing = ConfirmChannel(await broker.open(), drain_timeout=1.0)  # no way to reopen
    rpc = Rpc(publishing, Names("t"), "t.client.guest.x", 1.0)
    broker.leader_down.add(A1)
    with pytest.raises(PublishFailed):
        await inspect(rpc)
    broker.leader_down.clear()
    with pytest.raises(PublishFailed, match="nacked by the broker"):
        await inspect(rpc)
    assert broker.published == [] and len(broker.channels) == 1


async def test_concurrent_nacks_replace_the_channel_once() -> None:
    broker = FakeConfirmBroker()
    session = await session_of(broker)
    broker.leader_down.add(A1)
    broker.hold()
    sends = [asyncio.ensure_future(inspect(session.rpc)) for _ in range(3)]
    await asyncio.sleep(0.01)
    broker.release()
    results = await asyncio.gather(*sends, return_exceptions=True)
    assert all(isinstance(r, PublishFailed) for r in results), results
    assert len(broker.channels) == 3 and session.rpc.channel.replacements == 1


async def test_publishes_in_flight_are_confirmed_before_the_old_channel_closes() -> None:
    broker = FakeConfirmBroker()
    session = await session_of(broker)
    broker.leader_down.add(A1)
    broker.hold("agent.a2")
    other = asyncio.ensure_future(inspect(session.rpc, "a2"))  # in flight on channel 2
    await asyncio.sleep(0.01)
    with pytest.raises(PublishFailed):
        await inspect(session.rpc)  # nacked: channel 3 takes over
    await asyncio.sleep(0.05)
    assert channel(broker, 2).closed_by is None, "closed under a publish in flight"
    broker.release()
    await other  # confirmed on channel 2, not failed by its close
    await session.rpc.channel.retired()
    assert [(n, key) for n, _, key, _ in broker.published] == [(2, "agent.a2")]
    assert channel(broker, 2).closed_by == "client"


async def test_a_channel_the_broker_closed_is_replaced() -> None:
    broker = FakeConfirmBroker()
    session = await session_of(broker)
    await channel(broker, 2).close_by_broker()
    with pytest.raises(PublishFailed, match="closed"):
        await inspect(session.rpc)
    await inspect(session.rpc)
    assert [n for n, _, _, _ in broker.published] == [3]


async def test_the_channel_stays_while_a_fresh_one_cannot_be_opened() -> None:
    broker = FakeConfirmBroker()
    session = await session_of(broker)
    broker.leader_down.add(A1)
    broker.refuse_open = True  # the connection is down
    with pytest.raises(PublishFailed, match="nacked by the broker"):
        await inspect(session.rpc)
    assert session.rpc.channel.channel is cast(AbstractChannel, channel(broker, 2))
    assert channel(broker, 2).closed_by is None
    broker.refuse_open = False
    broker.leader_down.clear()
    with pytest.raises(PublishFailed):  # still the stuck channel: replaced now
        await inspect(session.rpc)
    await inspect(session.rpc)
    assert [n for n, _, _, _ in broker.published] == [4]


async def test_a_returned_or_unconfirmed_publish_keeps_the_channel() -> None:
    broker = FakeConfirmBroker()
    session = await session_of(broker, publish_timeout=0.05)
    broker.hold()
    with pytest.raises(PublishFailed, match="no publisher confirm"):
        await inspect(session.rpc)
    broker.release()
    publishing = session.rpc.channel
    returned = DeliveryError(None, Basic.Return(312, "NO_ROUTE", "t.requests", A1))
    assert not await publishing.recover(publishing.channel, returned)
    assert publishing.replacements == 0 and len(broker.channels) == 2
