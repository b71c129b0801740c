"""The bounded set of event ids already seen (``client/dedupe.py``)."""

from __future__ import annotations

from execbus.client.dedupe import SeenIds


def test_seen_ids_are_bounded() -> None:
    seen = SeenIds(capacity=2)
    assert seen.first_time("a")
    assert not seen.first_time("a")
    assert seen.first_time("b")
    assert seen.first_time("c")
    assert seen.first_time("a"), "the oldest id was forgotten"
