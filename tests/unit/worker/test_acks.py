"""``settle`` (``worker/acks.py``): the one place a delivery is acked, requeued or dead-lettered."""

from __future__ import annotations

import logging

import pytest

from execbus.testing.amqp import ACKED, REJECTED, REQUEUED, FakeDelivery, RecordingPublisher
from execbus.wire.routing import REASON_HEADER
from execbus.worker.acks import Disposition, settle


async def test_ack() -> None:
    delivery = FakeDelivery(b"{}")
    await settle(delivery, Disposition.ack(), RecordingPublisher())
    assert delivery.settlements == [ACKED]


async def test_requeue_is_a_nack_with_requeue() -> None:
    delivery = FakeDelivery(b"{}")
    publisher = RecordingPublisher()
    await settle(delivery, Disposition.requeue("reply not confirmed"), publisher)
    assert delivery.settlements == [REQUEUED]
    assert publisher.published == []


async def test_dead_letter_publishes_a_copy_with_the_reason_then_acks() -> None:
    delivery = FakeDelivery(
        b"payload",
        headers={"x-trace": "t-1"},
        message_id="m-1",
        correlation_id="c-1",
        reply_to="amq.gen-r",
        routing_key="agent.a1",
    )
    publisher = RecordingPublisher("ns")
    await settle(delivery, Disposition.dead_letter("invalid: bad body"), publisher)
    assert delivery.settlements == [ACKED]
    [dead] = publisher.published
    assert (dead.kind, dead.exchange, dead.routing_key, dead.body) == (
        "dead_letter",
        "ns.dead",
        "agent.a1",
        b"payload",
    )
    assert dead.headers == {
        "x-trace": "t-1",
        REASON_HEADER: "invalid: bad body",
        "x-execbus-routing-key": "agent.a1",
    }
    assert (dead.message_id, dead.correlation_id, dead.reply_to) == ("m-1", "c-1", "amq.gen-r")


async def test_a_dead_letter_the_broker_does_not_confirm_is_rejected_instead(
    caplog: pytest.LogCaptureFixture,
) -> None:
    delivery = FakeDelivery(b"{}")
    publisher = RecordingPublisher(timeout=0.5)
    publisher.fail("dead_letter")
    with caplog.at_level(logging.WARNING, logger="execbus.worker"):
        await settle(delivery, Disposition.dead_letter("invalid: x"), publisher)
    assert delivery.settlements == [REJECTED]
    assert publisher.dead_letters == [] and len(publisher.attempts) == 1
    assert "dead-letter publish failed (no publisher confirm for the dead letter within" in (
        caplog.text
    )


async def test_a_settle_on_a_dead_channel_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    delivery = FakeDelivery(b"{}", delivery_tag=7, settle_error=ConnectionError("gone"))
    with caplog.at_level(logging.WARNING, logger="execbus.worker"):
        await settle(delivery, Disposition.ack(), RecordingPublisher())
    assert delivery.settlements == []
    assert [r.getMessage() for r in caplog.records] == ["could not settle delivery 7: gone"]


async def test_a_second_settle_is_refused_like_aio_pika_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    delivery = FakeDelivery(b"{}", delivery_tag=3)
    publisher = RecordingPublisher()
    await settle(delivery, Disposition.ack(), publisher)
    with caplog.at_level(logging.WARNING, logger="execbus.worker"):
        await settle(delivery, Disposition.requeue("again"), publisher)
    assert delivery.settlements == [ACKED, REQUEUED]  # the double shows it ...
    assert "could not settle delivery 3: " in caplog.text  # ... and settle survives it
    with pytest.raises(AssertionError, match="settled more than once"):
        _ = delivery.settlement
