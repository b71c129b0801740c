"""What the agent needs from Python releases newer than 3.9, for the guests that run 3.9.

The agent runs on any ``python3`` from 3.9 on (``docs/guest.md``), while the
rest of execbus needs 3.11. Everything the agent would otherwise take from
3.10 or 3.11 comes from here, and ``tests/system/agent/test_py39.py`` checks
the package for constructs 3.9 lacks and runs it under a real 3.9 where one is
installed.

* :func:`slots_dataclass`: ``@dataclass(slots=True)`` on 3.10+, a plain
  ``@dataclass`` on 3.9 (``slots`` is new in 3.10).
* :func:`timeout`: ``asyncio.timeout`` on 3.11+; on older releases an
  equivalent context manager that cancels the task at the deadline and raises
  the builtin :class:`TimeoutError` (on 3.9 and 3.10 ``asyncio.TimeoutError``
  is a different class: catch :data:`TIMEOUT_ERRORS` around
  ``asyncio.wait_for``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from typing import TYPE_CHECKING, Any

__all__ = ["TIMEOUT_ERRORS", "slots_dataclass", "timeout"]

# asyncio.wait_for raises asyncio.TimeoutError, the builtin TimeoutError only from 3.11 on.
TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, asyncio.TimeoutError)

if TYPE_CHECKING:
    from dataclasses import dataclass as slots_dataclass
elif sys.version_info >= (3, 10):

    def slots_dataclass(**kwargs: Any) -> Any:
        return dataclasses.dataclass(slots=True, **kwargs)

else:

    def slots_dataclass(**kwargs: Any) -> Any:
        return dataclasses.dataclass(**kwargs)


if sys.version_info >= (3, 11):
    from asyncio import timeout
else:

    class timeout:
        """``async with timeout(delay)``: cancel the block after ``delay`` s (None: never)."""

        def __init__(self, delay: float | None) -> None:
            self._delay = delay
            self._task: asyncio.Task[Any] | None = None
            self._handle: asyncio.TimerHandle | None = None
            self._expired = False

        async def __aenter__(self) -> timeout:
            self._task = asyncio.current_task()
            if self._task is None:
                raise RuntimeError("timeout() must be used inside a task")
            if self._delay is not None:
                loop = asyncio.get_running_loop()
                self._handle = loop.call_later(max(self._delay, 0.0), self._expire)
            return self

        def _expire(self) -> None:
            if self._task is not None and not self._task.done():
                self._expired = True
                self._task.cancel()

        async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
            if self._expired and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
