"""Per-key serial lanes: work for one exec runs in arrival order, execs run in parallel.

Requests for the same exec (create -> start -> stdin -> resize) must apply
in the order they were delivered, but requests for different execs need not
wait for each other. :meth:`Lanes.submit` must be called in delivery order;
the work of one key runs strictly one after another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Lanes:
    """Serialize coroutines by key."""

    def __init__(self) -> None:
        self._tails: dict[str, asyncio.Future[None]] = {}

    def __len__(self) -> int:
        return len(self._tails)

    def submit(self, key: str, work: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        """Queue ``work`` behind earlier work of ``key``; returns its task."""
        previous = self._tails.get(key)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tails[key] = done
        return asyncio.create_task(self._run(key, previous, done, work))

    async def _run(
        self,
        key: str,
        previous: asyncio.Future[None] | None,
        done: asyncio.Future[None],
        work: Callable[[], Awaitable[T]],
    ) -> T:
        try:
            if previous is not None:
                await asyncio.shield(previous)
            return await work()
        finally:
            done.set_result(None)
            if self._tails.get(key) is done:
                del self._tails[key]
