"""Waiting on a condition instead of sleeping a fixed time.

A test that needs something to have happened (a process to listen, a record
to settle, a log line to appear) polls for it with :func:`wait_until` (in a
coroutine) or :func:`wait_until_sync` (in plain code) and fails with an
:class:`AssertionError` naming what it waited for; it never sleeps "long
enough" and hopes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
INTERVAL = 0.005


def _timed_out(what: str | None, timeout: float, last: object) -> AssertionError:
    described = what or "the condition"
    return AssertionError(f"timed out after {timeout:g} s waiting for {described} (last: {last!r})")


async def wait_until(
    condition: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    what: str | None = None,
    interval: float = INTERVAL,
) -> T:
    """Poll ``condition`` until it returns something truthy; return that value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if loop.time() >= deadline:
            raise _timed_out(what, timeout, value)
        await asyncio.sleep(interval)


def wait_until_sync(
    condition: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    what: str | None = None,
    interval: float = INTERVAL,
) -> T:
    """:func:`wait_until` for code outside an event loop (it blocks)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, value)
        time.sleep(interval)
