"""Exec output kept for the page: styled segments per exec, bounded per exec and in all.

Each exec's output is a list of ``(stream, text, style)`` segments with
increasing indexes, so a page that has shown up to index ``n`` asks for what
came after (:meth:`OutputStore.since`). The oldest segments of an exec go
once it holds more than ``per_exec`` characters (or ``MAX_SEGMENTS``
segments), and the buffers of the execs written least recently go once all
of them hold more than ``budget``: memory stays bounded whatever the execs
print.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

from execbus.console.ansi import Style, TerminalDecoder

MAX_SEGMENTS = 4096
SEGMENT_COST = 96  # bytes a segment costs beyond its text (tuple, str header)
Piece = tuple[str, str, Style | None]


class OutputBuffer:
    __slots__ = ("base", "cost", "decoders", "segments", "trimmed")

    def __init__(self) -> None:
        self.segments: deque[Piece] = deque()
        self.base = 0  # index of segments[0]
        self.cost = 0
        self.trimmed = False  # older output was dropped
        self.decoders: dict[str, TerminalDecoder] = {}

    @property
    def next(self) -> int:
        return self.base + len(self.segments)


def _cost(piece: Piece) -> int:
    return len(piece[1]) + SEGMENT_COST


class OutputStore:
    """Output buffers of the execs, keyed like the store's execs."""

    def __init__(self, per_exec: int = 128 * 1024, budget: int = 16 * 1024 * 1024) -> None:
        self.per_exec = per_exec
        self.budget = budget
        self.total = 0
        self._buffers: OrderedDict[str, OutputBuffer] = OrderedDict()
        self.evicted = 0  # buffers dropped to stay within the budget

    def __len__(self) -> int:
        return len(self._buffers)

    def __contains__(self, key: str) -> bool:
        return key in self._buffers

    def append(self, key: str, stream: str, data: bytes, final: bool = False) -> int:
        """Decode ``data`` of ``stream`` into ``key``'s buffer; the number of new segments."""
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = OutputBuffer()
        else:
            self._buffers.move_to_end(key)
        decoder = buffer.decoders.get(stream)
        if decoder is None:
            decoder = buffer.decoders[stream] = TerminalDecoder()
        pieces = [(stream, text, style) for text, style in decoder.feed(data, final)]
        for piece in pieces:
            buffer.segments.append(piece)
            cost = _cost(piece)
            buffer.cost += cost
            self.total += cost
        while buffer.segments and (
            buffer.cost > self.per_exec or len(buffer.segments) > MAX_SEGMENTS
        ):
            old = buffer.segments.popleft()
            buffer.base += 1
            buffer.trimmed = True
            buffer.cost -= _cost(old)
            self.total -= _cost(old)
        while self.total > self.budget and len(self._buffers) > 1:
            old_key, _ = next(iter(self._buffers.items()))
            if old_key == key:
                break
            self.drop(old_key)
            self.evicted += 1
        return len(pieces)

    def drop(self, key: str) -> None:
        buffer = self._buffers.pop(key, None)
        if buffer is not None:
            self.total -= buffer.cost

    def since(self, key: str, index: int) -> dict[str, Any] | None:
        """Segments from ``index`` on (all that is kept when older ones went: ``reset``)."""
        buffer = self._buffers.get(key)
        if buffer is None:
            return None
        reset = index < buffer.base or index > buffer.next
        start = buffer.base if reset else index
        segments = [
            [stream, text, style]
            for stream, text, style in list(buffer.segments)[start - buffer.base :]
        ]
        return {
            "reset": reset,
            "from": start,
            "next": buffer.next,
            "trimmed": buffer.trimmed,
            "segments": segments,
        }
