"""Stopping on SIGTERM/SIGINT: the first signal asks for a graceful stop, a second one exits.

One helper for every long-running execbus process: the agent daemon
(:mod:`execbus.agent.daemon`), the worker (``execbus worker``) and the
commands that run until interrupted (``execbus events``, ``execbus run``).
The first signal calls ``stop`` (an :class:`asyncio.Event` to set, or a
callable given the signal) and leaves the orderly shutdown to the caller;
any later one calls ``on_second``, by default :func:`exit_now`, so a
shutdown that takes too long can always be cut short (as in arq's worker).

Standard library only, like the rest of the agent package, which is what lets
the worker and the CLI import it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from typing import NoReturn, Union

__all__ = ["STOP_SIGNALS", "ShutdownSignals", "exit_now", "install_shutdown"]

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

# What the first signal does (an Event is set); a runtime alias, so no `X | Y` (3.9).
Stop = Union[asyncio.Event, Callable[[signal.Signals], None]]


def exit_now(sig: signal.Signals) -> NoReturn:
    """The default for a second signal: one warning line, then exit status 1."""
    log.warning("second %s: exiting now", sig.name)
    raise SystemExit(1)


class ShutdownSignals:
    """Signal handlers installed on a loop: the first signal stops, later ones call
    ``on_second``; :meth:`remove` uninstalls them."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        stop: Stop,
        on_second: Callable[[signal.Signals], None],
        signals: Sequence[signal.Signals],
    ) -> None:
        self._loop = loop
        self._stop = stop
        self._on_second = on_second
        self.signals = tuple(signals)
        self.received: list[signal.Signals] = []
        for signum in self.signals:
            loop.add_signal_handler(signum, self._handle, signum)

    def _handle(self, sig: signal.Signals) -> None:
        self.received.append(sig)
        if len(self.received) > 1:
            self._on_second(sig)
        elif isinstance(self._stop, asyncio.Event):
            self._stop.set()
        else:
            self._stop(sig)

    def remove(self) -> None:
        """Give the signals back their previous handling."""
        for signum in self.signals:
            self._loop.remove_signal_handler(signum)


def install_shutdown(
    loop: asyncio.AbstractEventLoop,
    stop: Stop,
    *,
    on_second: Callable[[signal.Signals], None] = exit_now,
    signals: Sequence[signal.Signals] = STOP_SIGNALS,
) -> ShutdownSignals:
    """On ``loop``, make the first of ``signals`` call (or set) ``stop`` and every
    later one call ``on_second`` (default: :func:`exit_now`)."""
    return ShutdownSignals(loop, stop, on_second, signals)
