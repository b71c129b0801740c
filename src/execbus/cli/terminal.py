"""The local terminal of ``execbus run``: raw mode, its size, and reading stdin.

In ``-it`` mode the local terminal is put in raw mode, so every keystroke
(Ctrl-C as ``\\x03`` included) goes to the remote PTY, which does the
echoing, line editing and signal generation. The terminal is always
restored on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty
from collections.abc import Iterator

READ_CHUNK = 64 * 1024


def is_tty(fd: int) -> bool:
    """True when ``fd`` is a terminal."""
    try:
        return os.isatty(fd)
    except OSError:
        return False


def terminal_size() -> tuple[int, int] | None:
    """``(width, height)`` of the local terminal (stdout's, else stdin's), if there is one."""
    for stream in (sys.stdout, sys.stdin):
        try:
            size = os.get_terminal_size(stream.fileno())
        except (OSError, ValueError, AttributeError):
            continue
        if size.columns > 0 and size.lines > 0:
            return size.columns, size.lines
    return None


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Put the terminal ``fd`` in raw mode; restore its settings on exit, whatever happens."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class StdinReader:
    """Reads chunks of a file descriptor without blocking the event loop.

    Pipes and terminals are awaited with ``add_reader`` and read one chunk
    at a time (so a slow remote end holds the writer back); regular files,
    which epoll cannot watch and which never block, are read directly.
    """

    def __init__(self, fd: int, chunk: int = READ_CHUNK) -> None:
        self._fd = fd
        self._chunk = chunk
        self._pollable = True

    async def read(self) -> bytes:
        """The next chunk; ``b""`` at end of file."""
        if self._pollable:
            await self._readable()
        try:
            return os.read(self._fd, self._chunk)
        except OSError:  # EIO: the terminal went away, as good as end of file
            return b""

    async def _readable(self) -> None:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        try:
            loop.add_reader(self._fd, wake)
        except (PermissionError, ValueError):  # a regular file (or not a descriptor epoll takes)
            self._pollable = False
            return
        try:
            await ready
        finally:
            loop.remove_reader(self._fd)
