"""The worker's readiness (``Worker.status``, served as ``/readyz``): not ready while no
publisher works, with the reason (``worker/service.py``).

The broker session is the in-memory one of ``execbus.testing.amqp`` (a confirm-mode
publishing channel the broker can close); the worker and its settings are real.
A closed channel ends the session within about 0.1 s, too short to catch over
HTTP in the system tests, hence this unit test.
"""

from __future__ import annotations

from typing import Any, cast

import pytest
from aio_pika.abc import AbstractChannel

from execbus.errors import PublishFailed
from execbus.settings import load_settings
from execbus.testing.amqp import FakeChannel, FakeConfirmBroker, FakeDelivery
from execbus.testing.waiting import wait_until
from execbus.wire.routing import Names
from execbus.worker.publisher import Publisher
from execbus.worker.service import Worker
from execbus.worker.session import BrokerSession


def make_worker() -> Worker:
    settings = load_settings(amqp_url="amqp://mq:5672/", namespace="t")
    return Worker(settings, agents={})


async def connect(
    worker: Worker, broker: FakeConfirmBroker | None = None
) -> tuple[BrokerSession, FakeChannel]:
    """Give ``worker`` a live session, as ``Worker._serve`` does; its publishing channel."""
    broker = broker or FakeConfirmBroker()
    publisher = Publisher(await broker.open(), Names("t"), timeout=1.0)
    await publisher.setup()
    worker.session = BrokerSession(broker.connection, publisher)
    return worker.session, broker.channels[0]


def broker_of(detail: dict[str, Any]) -> dict[str, Any]:
    broker: dict[str, Any] = detail["broker"]
    return broker


async def test_a_live_session_is_ready() -> None:
    worker = make_worker()
    ready, detail = worker.status()
    assert not ready
    assert broker_of(detail) == {"connected": False, "error": "not connected yet"}
    await connect(worker)
    ready, detail = worker.status()
    assert ready, detail
    assert broker_of(detail) == {"connected": True, "error": None}


async def test_a_publishing_channel_the_broker_closed_is_not_ready() -> None:
    """The channel is closed, and the session not ended yet (its close callback has
    not run): no reply or event could go out, so not ready."""
    worker = make_worker()
    session, channel = await connect(worker)
    await channel.close_by_broker("NOT_FOUND - no exchange 't.events' in vhost '/'")
    assert not session.closed.is_set()
    ready, detail = worker.status()
    assert not ready
    assert broker_of(detail)["connected"] is False
    assert broker_of(detail)["error"] == worker.last_broker_error


@pytest.mark.parametrize("how", ["publishing channel", "connection"])
async def test_an_ended_session_is_not_ready_and_says_why(how: str) -> None:
    worker = make_worker()
    session, channel = await connect(worker)
    if how == "publishing channel":
        # What Worker._serve registers on the publishing channel.
        channel.close_callbacks.add(lambda *args: worker._publisher_closed(session, args[-1]))
        await channel.close_by_broker("NOT_FOUND - no exchange 't.events' in vhost '/'")
        expected = "the publishing channel closed: "
    else:
        worker.last_broker_error = "connection to the broker lost"
        session.closed.set()  # what the connection's close callback does
        expected = "connection to the broker lost"
    assert session.closed.is_set()
    ready, detail = worker.status()
    assert not ready
    assert broker_of(detail)["connected"] is False
    error = broker_of(detail)["error"]
    assert isinstance(error, str) and error.startswith(expected), error
    if how == "publishing channel":
        assert "NOT_FOUND - no exchange 't.events'" in error


async def test_a_replaced_publishing_channel_keeps_the_worker_ready() -> None:
    """A nacked publish replaces the publishing channel and closes the old one (we
    do, not the broker): the session goes on, and the worker stays ready."""
    worker = make_worker()
    broker = FakeConfirmBroker()
    session, first = await connect(worker, broker)
    first.close_callbacks.add(lambda *args: worker._publisher_closed(session, args[-1]))
    broker.leader_down.add("agent.a1")  # <ns>.dead's quorum leader is down
    with pytest.raises(PublishFailed):
        await session.publisher.dead_letter(FakeDelivery(b"{}", routing_key="agent.a1"), "x")
    await wait_until(lambda: first.is_closed, 5.0, what="the nacked channel closed")
    assert session.publisher.channel is cast(AbstractChannel, broker.channels[1])
    assert not session.closed.is_set()
    ready, detail = worker.status()
    assert ready, detail
    assert broker_of(detail) == {"connected": True, "error": None}
