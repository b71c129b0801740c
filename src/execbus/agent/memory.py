"""Giving memory back after unauthenticated connections: cycle collection and heap trim.

A TLS connection leaves reference cycles holding its buffers (~300 KiB), and
the allocator keeps freed memory. So after a flood of connections that never
authenticated, the agent would stay as large as the flood made it.
:class:`Reclaimer` collects the young cycles every :data:`RECLAIM_EVERY` such
connections (a flood's memory stays bounded), and once the flood is over
everything, then hands free heap memory back to the system (glibc's
``malloc_trim``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable

# After unauthenticated connections end, how soon their memory is reclaimed.
RECLAIM_DELAY = 1.0
RECLAIM_EVERY = 16


class Reclaimer:
    """Reclaims memory after connections that never authenticated (see the module)."""

    def __init__(self) -> None:
        self._handle: asyncio.TimerHandle | None = None
        self._unreclaimed = 0
        self._closed = False

    def soon(self) -> None:
        """One more unauthenticated connection ended."""
        self._unreclaimed += 1
        if self._unreclaimed >= RECLAIM_EVERY:
            self._unreclaimed = 0
            gc.collect(1)
        if self._handle is None:
            loop = asyncio.get_running_loop()
            self._handle = loop.call_later(RECLAIM_DELAY, self._reclaim)

    def close(self) -> None:
        """The agent is stopping: no more full collections."""
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _reclaim(self) -> None:
        self._handle = None
        self._unreclaimed = 0
        if not self._closed:
            reclaim_memory()


def reclaim_memory() -> None:
    """Collect reference cycles and hand free heap memory back to the system (glibc)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_TRIM: list[Callable[[int], int] | None] = []


def _malloc_trim() -> Callable[[int], int] | None:
    if not _TRIM:
        fn: Callable[[int], int] | None = None
        with contextlib.suppress(Exception):  # no ctypes, or not glibc
            import ctypes

            fn = ctypes.CDLL(None).malloc_trim
        _TRIM.append(fn)
    return _TRIM[0]
