"""The line stream to qemu-ga: one command at a time, in order.

qemu-ga speaks newline-delimited QMP-style JSON on one stream (a Unix socket
with ``qemu-ga -m unix-listen``, or the host side of a virtio-serial
channel): ``{"execute": cmd, "arguments": {...}}`` answered by
``{"return": ...}`` or ``{"error": {"class", "desc"}}``, one command at a
time and in order. It serves one client at a time; others wait in the
socket's backlog. :class:`QgaStream` is one such connection: it runs
commands, resynchronises with ``guest-sync-delimited`` and closes gracefully;
what the commands mean is left to the rest of the package.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

from execbus.errors import AgentError, AgentProtocolError, AgentUnavailable, ErrorCode

# One answer may carry two 16 MiB captures in base64 (about 43 MiB) plus JSON.
MAX_LINE = 64 * 1024 * 1024
READ_CHUNK = 256 * 1024
SYNC_SENTINEL = b"\xff"

# One command with its arguments, on whatever stream is live (the collaborators
# of the connection call through this, never through the connection itself).
QgaCall = Callable[[str, dict[str, Any] | None], Awaitable[Any]]


class QgaCommandError(AgentError):
    """qemu-ga answered a command with ``{"error": {"class", "desc"}}``."""

    code = ErrorCode.INTERNAL

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"qemu-ga refused {command}: {error_class}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class QgaStream:
    """One connected stream to qemu-ga; commands run strictly one at a time.

    Any command whose answer was not read completely (timeout, cancellation,
    a broken stream) aborts the stream: a late answer would otherwise be
    taken for the next command's. The next connection resynchronises.

    Closing is graceful on purpose: qemu-ga (7.2, ``unix-listen``) *exits*
    when a client closes its socket with answers still unread ("error
    reading channel" on ECONNRESET). So a stream is shut for writing, read
    until qemu-ga closes its side, and only then closed.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.lock = asyncio.Lock()
        self.closed = asyncio.Event()
        self.reason = ""
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer already searched for a newline

    @classmethod
    async def open_unix(cls, path: str, timeout: float) -> QgaStream:
        """Dial qemu-ga's Unix socket (a missing or refusing socket: :class:`AgentUnavailable`)."""
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(path, limit=MAX_LINE)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AgentUnavailable(exc.strerror or str(exc)) from exc
        return cls(reader, writer)

    def abort(self, reason: str) -> None:
        """Mark the stream dead (first reason wins) and stop sending: see :meth:`aclose`."""
        if not self.closed.is_set():
            self.reason = reason
            self.closed.set()
            with contextlib.suppress(OSError, RuntimeError):
                if self.writer.can_write_eof():
                    self.writer.write_eof()

    async def aclose(self, drain_timeout: float) -> None:
        """Shut down gracefully: drain what qemu-ga still sends until it closes, then close."""
        self.abort("closed")
        with contextlib.suppress(TimeoutError, OSError, ConnectionError):
            async with asyncio.timeout(drain_timeout), self.lock:
                while await self.reader.read(READ_CHUNK):
                    pass
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()

    async def call(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float,
        on_sent: Callable[[], None] | None = None,
    ) -> Any:
        """Run one command; ``timeout`` bounds each silence, not a long answer."""
        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            request["arguments"] = arguments
        data = json.dumps(request).encode() + b"\n"
        async with self.lock:
            if self.closed.is_set():
                raise AgentUnavailable(f"qemu-ga connection lost: {self.reason}")
            reply = await self._guarded(command, self._exchange(data, timeout, on_sent), timeout)
        return _unwrap(command, reply)

    async def _guarded(self, command: str, work: Awaitable[Any], timeout: float) -> Any:
        """Await ``work``; on any failure abort the stream and translate the error."""
        try:
            return await work
        except asyncio.CancelledError:
            self.abort(f"{command} was cancelled before its answer arrived")
            raise
        except TimeoutError:
            self.abort(f"no answer to {command} within {timeout:g} s")
            raise AgentUnavailable(
                f"qemu-ga did not answer {command} within {timeout:g} s"
            ) from None
        except (OSError, ConnectionError, EOFError) as exc:
            self.abort(f"connection error during {command}: {exc}")
            raise AgentUnavailable(f"qemu-ga connection lost during {command}: {exc}") from exc
        except AgentProtocolError as exc:
            self.abort(exc.message)
            raise
        except ValueError as exc:
            self.abort(f"unreadable answer to {command}")
            raise AgentProtocolError(f"qemu-ga sent an unreadable answer to {command}") from exc

    async def _exchange(
        self, data: bytes, timeout: float, on_sent: Callable[[], None] | None
    ) -> dict[str, Any]:
        if on_sent is not None:
            on_sent()  # from here on, qemu-ga may act on the command
        self.writer.write(data)
        async with asyncio.timeout(timeout):
            await self.writer.drain()
        while True:
            line = await self._read_line(timeout)
            if line.strip():
                return _parse_object(line)

    async def sync(self, timeout: float) -> None:
        """``guest-sync-delimited``: flush qemu-ga's parser and skip stale answers.

        The leading 0xFF makes qemu-ga drop any partial JSON a previous client
        left (it answers that with a parse error, which is skipped too); its
        answer to the sync is preceded by 0xFF, and only the one carrying our
        random id ends the stale stream.
        """
        token = random.getrandbits(62)
        request = {"execute": "guest-sync-delimited", "arguments": {"id": token}}
        data = SYNC_SENTINEL + json.dumps(request).encode() + b"\n"
        async with self.lock:
            await self._guarded("guest-sync-delimited", self._sync(data, token, timeout), timeout)

    async def _sync(self, data: bytes, token: int, timeout: float) -> None:
        self.writer.write(data)
        async with asyncio.timeout(timeout):
            await self.writer.drain()
            while True:
                await self._skip_past_sentinel(timeout)
                line = await self._read_line(timeout)
                try:
                    reply = json.loads(line)
                except ValueError:
                    continue
                if isinstance(reply, dict) and reply.get("return") == token:
                    return

    async def _skip_past_sentinel(self, timeout: float) -> None:
        while (index := self._buffer.find(SYNC_SENTINEL)) < 0:
            self._buffer.clear()
            self._scanned = 0
            await self._fill(timeout)
        del self._buffer[: index + 1]
        self._scanned = 0

    async def _read_line(self, timeout: float) -> bytes:
        while (end := self._buffer.find(b"\n", self._scanned)) < 0:
            self._scanned = len(self._buffer)
            if self._scanned > MAX_LINE:
                raise AgentProtocolError(f"qemu-ga sent a line longer than {MAX_LINE} bytes")
            await self._fill(timeout)
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        self._scanned = 0
        return line

    async def _fill(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            chunk = await self.reader.read(READ_CHUNK)
        if not chunk:
            raise ConnectionResetError("qemu-ga closed the connection")
        self._buffer += chunk


def _parse_object(line: bytes) -> dict[str, Any]:
    doc = json.loads(line)
    if not isinstance(doc, dict):
        raise AgentProtocolError("qemu-ga sent a JSON value that is not an object")
    return doc


def _unwrap(command: str, reply: dict[str, Any]) -> Any:
    """The ``return`` value of an answer, or its ``error`` as :class:`QgaCommandError`."""
    if "return" in reply:
        return reply["return"]
    error = reply.get("error")
    if isinstance(error, dict):
        raise QgaCommandError(command, str(error.get("class", "")), str(error.get("desc", "")))
    raise AgentProtocolError(f"qemu-ga answered {command} with neither return nor error")
