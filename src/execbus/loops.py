"""Which event loop the worker and the CLI run on.

uvloop (a libuv event loop) cuts the worker's CPU per exec by about a tenth;
it is the default where it is installed (``EXECBUS_EVENT_LOOP=auto``).
``asyncio`` forces the standard loop. The guest agent always uses asyncio's
loop: it depends on the standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from execbus.errors import ConfigError

T = TypeVar("T")
LoopChoice = Literal["auto", "uvloop", "asyncio"]


def loop_factory(choice: LoopChoice) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for ``choice`` (``None``: asyncio's default loop)."""
    if choice == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("EXECBUS_EVENT_LOOP=uvloop, but uvloop is not installed") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], choice: LoopChoice = "auto") -> T:
    """Like :func:`asyncio.run`, on the loop ``choice`` names."""
    try:
        factory = loop_factory(choice)
    except ConfigError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait at most ``timeout`` seconds for ``event``; True once it is set.

    Use this (or ``asyncio.timeout``), never ``asyncio.wait_for``, around
    anything that can be woken while it is being cancelled: on Python 3.11,
    ``wait_for`` swallows a cancellation that arrives as its inner wait
    completes, and the cancelled task runs on forever.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()


def loop_name() -> str:
    """``uvloop`` or ``asyncio``: the loop running now (for logs and metrics)."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
