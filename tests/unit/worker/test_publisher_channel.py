"""The worker's publishing channel is replaced after a nack (``worker/publisher.py``,
``worker/session.py``), against the in-memory broker of ``execbus.testing.amqp``.

The dead letters go to a quorum queue (``<ns>.dead``): on RabbitMQ 3.10 a channel
that once asked that queue's dead leader stays refused by it (docs/reliability.md).
"""

from __future__ import annotations

from typing import Any, cast

import pytest
from aio_pika.abc import AbstractChannel

from execbus.errors import PublishFailed
from execbus.registry import ExecRegistry
from execbus.testing.amqp import FakeConfirmBroker, FakeDelivery
from execbus.testing.waiting import wait_until
from execbus.wire.config import ExecConfig
from execbus.wire.replies import Reply
from execbus.wire.routing import Names
from execbus.worker import event_factory
from execbus.worker.publisher import Publisher
from execbus.worker.session import BrokerSession

KEY = "agent.a1"  # the dead letter keeps the request's routing key


async def session_of(broker: FakeConfirmBroker) -> BrokerSession:
    """A broker session as ``worker/service.py`` builds it: a publisher on a confirm-mode
    channel, and the session watching that channel's close."""
    publisher = Publisher(await broker.open(), Names("t"), timeout=1.0)
    await publisher.setup()
    return BrokerSession(broker.connection, publisher)


def channel(broker: FakeConfirmBroker, number: int) -> AbstractChannel:
    return cast(AbstractChannel, broker.channels[number - 1])


def watch_close(session: BrokerSession) -> list[Any]:
    """What ``Worker._serve`` does: the publishing channel's close ends the session."""
    closes: list[Any] = []
    session.publisher.channel.close_callbacks.add(lambda *args: closes.append(args[-1]))
    return closes


async def test_a_nacked_dead_letter_replaces_the_channel_and_the_session_goes_on() -> None:
    broker = FakeConfirmBroker()
    session = await session_of(broker)
    closes = watch_close(session)
    broker.leader_down.add(KEY)
    with pytest.raises(PublishFailed, match=r"refused the dead letter .* nacked by the broker"):
        await session.publisher.dead_letter(FakeDelivery(b"{}", routing_key=KEY), "invalid: x")
    broker.leader_down.clear()
    await session.publisher.dead_letter(FakeDelivery(b"{}", routing_key=KEY), "invalid: x")
    assert [(n, exchange, key) for n, exchange, key, _ in broker.published] == [(2, "t.dead", KEY)]
    assert session.publisher.channel is channel(broker, 2)
    await wait_until(
        lambda: broker.channels[0].closed_by == "client", 5.0, what="the old channel closed"
    )
    assert closes == [], "closing the replaced channel ended the session"
    await broker.channels[1].close_by_broker()  # the new one is watched instead
    assert len(closes) == 1


async def test_a_nacked_event_is_sent_again_on_a_fresh_channel() -> None:
    broker = FakeConfirmBroker()
    session = await session_of(broker)
    record, _ = ExecRegistry("a1").create(ExecConfig(cmd=["true"]), "e1")
    key = "exec.a1.~.created"
    broker.leader_down.add(key)  # a durable quorum queue bound to the events exchange
    with pytest.raises(PublishFailed, match="refused the event"):
        await session.publisher.event(key, event_factory.created("a1", record), "ev-1")
    broker.leader_down.clear()
    await session.publisher.event(key, event_factory.created("a1", record), "ev-1")
    assert [n for n, _, _, _ in broker.published] == [2]
    assert session.publisher.replacements == 1


async def test_a_channel_the_broker_closed_is_left_to_the_session() -> None:
    """The worker starts a new broker session when its publishing channel closes."""
    broker = FakeConfirmBroker()
    session = await session_of(broker)
    await broker.channels[0].close_by_broker()
    with pytest.raises(PublishFailed, match="closed"):
        await session.publisher.reply("amq.gen-r", "c-1", Reply.success(None))
    assert session.publisher.channel is channel(broker, 1) and len(broker.channels) == 1


async def test_before_a_session_a_nack_keeps_the_channel() -> None:
    broker = FakeConfirmBroker()
    publisher = Publisher(await broker.open(), Names("t"), timeout=1.0)
    broker.leader_down.add(KEY)
    with pytest.raises(PublishFailed):
        await publisher.dead_letter(FakeDelivery(b"{}", routing_key=KEY), "invalid: x")
    assert publisher.channel is channel(broker, 1) and publisher.replacements == 0
