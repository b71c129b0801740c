"""Framing of the execbus agent protocol, version 1 (standard library only).

See ``docs/agent-protocol.md`` for the full specification. In short, every
frame on the byte stream is::

    u32 length        big-endian; the number of bytes that follow (>= 5)
    u8  kind          1 = MSG (the only kind in version 1)
    u32 header_len    big-endian; length of the JSON header
    header            UTF-8 JSON object
    payload           raw bytes (length - 5 - header_len); output, stdin, captures

Both the agent daemon and the worker-side client use this module, so it must
import nothing outside the standard library.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import field
from typing import Any

from execbus.agent.compat import slots_dataclass

PROTOCOL_VERSION = 1
KIND_MSG = 1
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
MIN_FRAME = 5
_PREFIX = struct.Struct(">IBI")
_LEN = struct.Struct(">I")


class FrameError(Exception):
    """A frame could not be decoded. ``fatal`` means the stream is out of sync."""

    def __init__(self, code: str, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal


class FrameTooLarge(FrameError):
    """A peer announced a frame larger than the negotiated maximum."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            "frame_too_large", f"frame of {size} bytes exceeds the limit of {limit}", fatal=True
        )
        self.size = size
        self.limit = limit


@slots_dataclass()
class Frame:
    """One decoded frame: a JSON header and a binary payload."""

    header: dict[str, Any]
    payload: bytes = b""
    raw_size: int = field(default=0, compare=False)


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """Encode one MSG frame."""
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    length = 5 + len(head) + len(payload)
    return b"".join((_PREFIX.pack(length, KIND_MSG, len(head)), head, payload))


def decode_body(body: bytes) -> Frame:
    """Decode what follows the length prefix (kind, header length, header, payload)."""
    if len(body) < MIN_FRAME:
        raise FrameError("bad_frame", f"frame body of {len(body)} bytes is too short")
    kind = body[0]
    if kind != KIND_MSG:
        raise FrameError("bad_frame", f"unknown frame kind {kind}")
    (head_len,) = _LEN.unpack_from(body, 1)
    if head_len > len(body) - 5:
        raise FrameError("bad_frame", "header length runs past the end of the frame")
    try:
        header = json.loads(body[5 : 5 + head_len])
    except (ValueError, RecursionError) as exc:
        raise FrameError("bad_json", f"frame header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("bad_json", "frame header must be a JSON object")
    return Frame(header, bytes(body[5 + head_len :]), len(body) + 4)


async def read_frame(reader: asyncio.StreamReader, max_frame: int) -> Frame | None:
    """Read one frame; ``None`` at a clean end of stream.

    Raises :class:`FrameTooLarge` (fatal: the caller should answer and close)
    or :class:`FrameError` for a frame that is well delimited but undecodable
    (the stream stays in sync, the caller may answer and keep going).
    """
    try:
        prefix = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FrameError("bad_frame", "stream ended inside a frame", fatal=True) from None
        return None
    (length,) = _LEN.unpack(prefix)
    if length > max_frame:
        raise FrameTooLarge(length, max_frame)
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise FrameError("bad_frame", "stream ended inside a frame", fatal=True) from None
    return decode_body(body)
