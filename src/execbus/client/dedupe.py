"""Dropping duplicate events by their stable ``event_id``."""

from __future__ import annotations

from collections import OrderedDict

DEFAULT_CAPACITY = 16_384


class SeenIds:
    """The most recent event ids (bounded, oldest forgotten first)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def first_time(self, event_id: str) -> bool:
        """True the first time ``event_id`` is seen; False for a duplicate."""
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return False
        self._ids[event_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return True
