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

from collections import OrderedDict
from typing import Any

from execbus.console.ansi import Style, TerminalDecoder

MAX_SEGMENTS = 4096
SEGMENT_COST = 120  # bytes a segment costs beyond its text (tuple, str header, list slot)
BUFFER_COST = 400  # bytes a buffer costs when empty (object, list, dict entry)
DECODER_COST = 1200  # bytes of a stream's decoder, kept until the exec ends
Piece = tuple[str, str, Style | None]


class OutputBuffer:
    __slots__ = ("base", "cost", "decoders", "segments", "trimmed")

    def __init__(self) -> None:
        self.segments: list[Piece] = []
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
            buffer.cost = BUFFER_COST
            self.total += BUFFER_COST
        else:
            self._buffers.move_to_end(key)
        decoder = buffer.decoders.get(stream)
        if decoder is None:
            decoder = buffer.decoders[stream] = TerminalDecoder()
            buffer.cost += DECODER_COST
            self.total += DECODER_COST
        pieces = [(stream, text, style) for text, style in decoder.feed(data, final)]
        for piece in pieces:
            buffer.segments.append(piece)
            cost = _cost(piece)
            buffer.cost += cost
            self.total += cost
        drop = 0
        while drop < len(buffer.segments) and (
            buffer.cost > self.per_exec or len(buffer.segments) - drop > MAX_SEGMENTS
        ):
            cost = _cost(buffer.segments[drop])
            buffer.cost -= cost
            self.total -= cost
            drop += 1
        if drop:
            del buffer.segments[:drop]
            buffer.base += drop
            buffer.trimmed = True
        while self.total > self.budget and len(self._buffers) > 1:
            old_key, _ = next(iter(self._buffers.items()))
            if old_key == key:
                break
            self.drop(old_key)
            self.evicted += 1
        return len(pieces)

    def finish(self, key: str) -> None:
        """The exec ended: flush and forget its decoders (what they held back is shown)."""
        buffer = self._buffers.get(key)
        if buffer is None or not buffer.decoders:
            return
        for stream, decoder in buffer.decoders.items():
            for text, style in decoder.feed(b"", final=True):
                piece = (stream, text, style)
                buffer.segments.append(piece)
                buffer.cost += _cost(piece)
                self.total += _cost(piece)
        released = DECODER_COST * len(buffer.decoders)
        buffer.decoders = {}
        buffer.cost -= released
        self.total -= released

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
            [stream, text, style] for stream, text, style in buffer.segments[start - buffer.base :]
        ]
        return {
            "reset": reset,
            "from": start,
            "next": buffer.next,
            "trimmed": buffer.trimmed,
            "segments": segments,
        }
