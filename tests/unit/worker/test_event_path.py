"""The event path's output window: chunks are pipelined, at most OUTPUT_WINDOW unconfirmed."""

from __future__ import annotations

import asyncio
import logging

import pytest
from pydantic import BaseModel

from execbus.errors import PublishFailed
from execbus.registry import ExecRecord, ExecRegistry
from execbus.wire import events as ev
from execbus.wire.config import ExecConfig
from execbus.wire.routing import Names
from execbus.worker import event_factory
from execbus.worker.event_path import OUTPUT_WINDOW, ExecEvents


class HeldOutbox:
    """Each publish waits for its confirm, which the test gives (or fails) by hand."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.confirms: list[asyncio.Future[None]] = []

    async def event(self, routing_key: str, event: BaseModel, event_id: str) -> None:
        self.sent.append(getattr(event, "seq", -1))
        confirm = asyncio.get_running_loop().create_future()
        self.confirms.append(confirm)
        await confirm

    async def reply(self, reply_to: str, correlation_id: str | None, reply: BaseModel) -> None:
        raise AssertionError("no replies here")


def _record() -> ExecRecord:
    record, _ = ExecRegistry("a1").create(ExecConfig(cmd=["cat"]), "e1")
    return record


async def test_output_is_pipelined_within_the_window_and_keeps_its_order() -> None:
    outbox = HeldOutbox()
    events = ExecEvents("a1", Names("t"), outbox)
    record = _record()

    def chunk(seq: int) -> ev.OutputEvent:
        return event_factory.output("a1", record, "stdout", seq, b"x")

    for seq in range(OUTPUT_WINDOW):  # none of these waits for a confirm
        async with asyncio.timeout(1):
            await events.send_output(record, chunk(seq))
    blocked = asyncio.create_task(events.send_output(record, chunk(OUTPUT_WINDOW)))
    await asyncio.sleep(0.01)
    assert not blocked.done(), "one chunk over the window waits for the oldest confirm"
    assert outbox.sent == list(range(OUTPUT_WINDOW + 1)), "published at once, in order"
    outbox.confirms[0].set_result(None)
    async with asyncio.timeout(1):
        await blocked
    for confirm in outbox.confirms[1:]:
        confirm.set_result(None)


async def test_a_lost_chunk_is_logged_and_the_stream_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox = HeldOutbox()
    events = ExecEvents("a1", Names("t"), outbox)
    record = _record()
    lost = event_factory.output("a1", record, "stderr", 0, b"x")
    await events.send_output(record, lost)
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="execbus.worker"):
        outbox.confirms[0].set_exception(PublishFailed("channel closed"))
        await asyncio.sleep(0.01)
    assert [r.getMessage() for r in caplog.records] == [
        "exec e1: output chunk stderr/0 lost: channel closed"
    ]
    await events.send_output(record, event_factory.output("a1", record, "stderr", 1, b"y"))
    await asyncio.sleep(0)
    assert outbox.sent == [0, 1]
    outbox.confirms[1].set_result(None)
