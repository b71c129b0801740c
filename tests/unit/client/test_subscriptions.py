"""Output chunks in order, without duplicates (``client/subscriptions.py``)."""

from __future__ import annotations

from datetime import UTC, datetime

from execbus.client.subscriptions import ChunkOrder
from execbus.wire.events import OutputEvent

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def chunk(stream: str, seq: int) -> OutputEvent:
    return OutputEvent(
        event_id=f"{stream}{seq}", agent="a", exec_id="e1", time=NOW,
        stream=stream, seq=seq, data=b"%d" % seq,  # type: ignore[arg-type]
    )  # fmt: skip


def test_chunks_come_out_in_seq_order_without_duplicates() -> None:
    order = ChunkOrder()
    assert order.add(chunk("stdout", 1)) == []
    assert [c.seq for c in order.add(chunk("stdout", 0))] == [0, 1]
    assert order.add(chunk("stdout", 1)) == [], "a duplicate is dropped"
    assert [c.seq for c in order.add(chunk("stderr", 0))] == [0], "streams are independent"
    assert order.add(chunk("stdout", 3)) == []
    assert [c.seq for c in order.rest()] == [3], "a gap never filled is flushed at the end"
