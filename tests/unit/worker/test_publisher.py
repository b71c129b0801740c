"""The worker's publisher (``worker/publisher.py``): what events, replies and dead letters carry."""

from __future__ import annotations

import pytest

from execbus.errors import PublishFailed
from execbus.registry import ExecRegistry
from execbus.testing.amqp import FakeDelivery, RecordingPublisher
from execbus.wire.config import ExecConfig
from execbus.wire.replies import Reply
from execbus.wire.routing import EXEC_ID_HEADER, REASON_HEADER
from execbus.worker import event_factory
from execbus.worker.publisher import DROPPED_HEADERS, MAX_DEAD_HEADERS, dead_letter_headers


async def test_an_event_carries_its_id_type_and_exec_id() -> None:
    publisher = RecordingPublisher("ns")
    record, _ = ExecRegistry("a1").create(ExecConfig(cmd=["true"]), "e1")
    event = event_factory.created("a1", record)
    await publisher.event("exec.a1.~.created", event, "ev-1")
    [sent] = publisher.published
    assert (sent.kind, sent.exchange, sent.routing_key) == (
        "event",
        "ns.events",
        "exec.a1.~.created",
    )
    assert (sent.message_id, sent.type) == ("ev-1", "exec.created")
    assert sent.headers == {EXEC_ID_HEADER: "e1"}
    assert sent.json()["exec_id"] == "e1"


async def test_a_reply_goes_through_the_default_exchange_with_its_correlation_id() -> None:
    publisher = RecordingPublisher("ns")
    await publisher.reply("amq.gen-r", "c-9", Reply.success(None, request_type="exec.remove"))
    [sent] = publisher.replies
    assert (sent.exchange, sent.routing_key, sent.correlation_id, sent.type) == (
        "",
        "amq.gen-r",
        "c-9",
        "reply",
    )


async def test_an_unconfirmed_publish_is_publish_failed() -> None:
    publisher = RecordingPublisher("ns", timeout=0.25)
    publisher.fail("reply")
    with pytest.raises(PublishFailed, match=r"^no publisher confirm for the reply within 0.25 s$"):
        await publisher.reply("amq.gen-r", None, Reply.success(None))
    assert publisher.published == [] and len(publisher.attempts) == 1


def test_dead_letter_headers_too_large_are_replaced_by_their_size() -> None:
    original = FakeDelivery(b"{}", headers={"big": "x" * (MAX_DEAD_HEADERS + 1)})
    headers = dead_letter_headers(original, "r" * 2000)
    assert set(headers) == {DROPPED_HEADERS, REASON_HEADER, "x-execbus-routing-key"}
    assert headers[DROPPED_HEADERS] > MAX_DEAD_HEADERS
    assert headers[REASON_HEADER] == "r" * 1024


async def test_a_dead_letter_copy_cuts_long_properties_to_short_strings() -> None:
    publisher = RecordingPublisher("ns")
    original = FakeDelivery(b"{}", message_id="m" * 300, correlation_id="é" * 200)
    await publisher.dead_letter(original, "invalid: x")
    [dead] = publisher.dead_letters
    assert dead.message_id == "m" * 255
    assert dead.correlation_id is not None and len(dead.correlation_id.encode()) <= 255
