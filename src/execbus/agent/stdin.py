"""Writing ``stdin`` requests to a process's stdin pipe or PTY, with flow control."""

from __future__ import annotations

import asyncio
import errno
import os

from execbus.agent.errors import STDIN_CLOSED, AgentError

# What closing stdin writes on a terminal: VEOF (^D), end of file for a
# reader in canonical mode at the start of a line.
TTY_EOF = b"\x04"


class StdinWriter:
    """Owns the write end of a process's stdin (a pipe, or a dup of the PTY master).

    Writes are serialized with a lock, in request order, and wait for the
    descriptor to become writable instead of buffering in the agent.
    """

    def __init__(self, fd: int, *, tty: bool) -> None:
        self._fd: int | None = fd
        self._tty = tty
        self._lock = asyncio.Lock()
        self._waiter: asyncio.Future[None] | None = None
        os.set_blocking(fd, False)

    async def write(self, data: bytes, *, close: bool) -> None:
        async with self._lock:
            if self._fd is None:
                raise AgentError(STDIN_CLOSED, "stdin is closed")
            try:
                await self._write_all(self._fd, data)
                if close and self._tty:
                    await self._write_all(self._fd, TTY_EOF)
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.EIO, errno.EBADF):
                    raise
                self.close()
                raise AgentError(STDIN_CLOSED, "the process closed its stdin") from None
            if close:
                self.close()

    async def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                await self._writable(fd)

    async def _writable(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        self._waiter = fut = loop.create_future()
        loop.add_writer(fd, _wake, fut)
        try:
            await fut
        finally:
            self._waiter = None
            if self._fd == fd:  # close() already unregistered a closed descriptor
                loop.remove_writer(fd)

    def close(self) -> None:
        """Close our end now; a write waiting for room fails with ``stdin_closed``."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            # Unregister before closing: the number may be reused at once.
            asyncio.get_running_loop().remove_writer(fd)
            waiter.set_exception(OSError(errno.EBADF, "stdin closed"))
        os.close(fd)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
