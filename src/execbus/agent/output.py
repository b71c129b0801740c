"""Reading a process's output: bounded captures and backpressured streaming."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Optional

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
# Bytes a final drain may still read once the process is gone (see OutputPump.drain_now).
FINAL_DRAIN_MAX = 1024 * 1024

# (stream, seq, chunk) -> None, or an awaitable that completes when the
# watchers have room again; reading pauses until then.
# (Optional, not `X | None`: a runtime expression, and the agent runs on 3.9.)
ChunkSink = Callable[[str, int, bytes], Optional[Awaitable[object]]]


class Capture:
    """The first ``limit`` bytes of a stream; the rest is only counted.

    A ``discard`` capture keeps and counts nothing (a stream not attached).
    """

    __slots__ = ("data", "discard", "dropped", "limit")

    def __init__(self, limit: int, *, discard: bool = False) -> None:
        self.limit = limit
        self.discard = discard
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        if self.discard:
            return
        room = self.limit - len(self.data)
        if room >= len(chunk):
            self.data += chunk
            return
        if room > 0:
            self.data += chunk[:room]
        self.dropped += len(chunk) - max(room, 0)


class OutputPump:
    """Reads one pipe or PTY master with the event loop into a :class:`Capture`.

    Reading pauses while ``sink`` reports congestion, so a slow watcher slows
    the process down (it blocks on a full pipe) instead of growing our memory.
    The pump owns ``fd`` and closes it at end of stream or on :meth:`close`.
    """

    def __init__(
        self,
        fd: int,
        stream: str,
        capture: Capture,
        sink: ChunkSink | None,
        on_eof: Callable[[], None],
    ) -> None:
        self.stream = stream
        self.capture = capture
        self.eof = False
        self._fd = fd
        self._sink = sink
        self._on_eof = on_eof
        self._seq = 0
        self._paused = False
        self._loop = asyncio.get_running_loop()

    def start(self) -> None:
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        data = self._read()
        if data is None:
            return
        if not data:
            self._finish()
            return
        self._deliver(data, respect_backpressure=True)

    def _read(self) -> bytes | None:
        """One chunk; ``b""`` at end of stream, ``None`` when nothing is ready."""
        try:
            return os.read(self._fd, CHUNK)
        except BlockingIOError:
            return None
        except OSError as exc:
            # A PTY master reports EIO once every slave descriptor is closed.
            if exc.errno != errno.EIO:
                log.warning("reading %s failed: %s", self.stream, exc)
            return b""

    def _deliver(self, data: bytes, *, respect_backpressure: bool) -> None:
        self.capture.add(data)
        if self._sink is None:
            return
        seq, self._seq = self._seq, self._seq + 1
        congested = self._sink(self.stream, seq, data)
        if congested is not None and respect_backpressure:
            self._paused = True
            self._loop.remove_reader(self._fd)
            asyncio.ensure_future(congested).add_done_callback(self._resume)

    def _resume(self, _: object) -> None:
        if self._paused and not self.eof:
            self._paused = False
            self._loop.add_reader(self._fd, self._on_readable)

    def drain_now(self) -> None:
        """Read what is already buffered (ignoring backpressure), then close.

        Used when the process has exited but something else (a background
        grandchild) still holds the other end open.
        """
        total = 0
        while not self.eof and total < FINAL_DRAIN_MAX:
            data = self._read()
            if not data:
                break
            total += len(data)
            self._deliver(data, respect_backpressure=False)
        self.close()

    def _finish(self) -> None:
        self.close()
        self._on_eof()

    def close(self) -> None:
        if self.eof:
            return
        self.eof = True
        if not self._paused:
            self._loop.remove_reader(self._fd)
        os.close(self._fd)
