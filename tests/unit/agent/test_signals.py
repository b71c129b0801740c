"""The one shutdown-signal helper: the first signal stops, a second one exits."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest

from execbus.agent.signals import install_shutdown

SIG = signal.SIGUSR1  # not one pytest or the loop cares about


async def _deliver(times: int) -> None:
    for _ in range(times):
        os.kill(os.getpid(), SIG)
        await asyncio.sleep(0.05)


def test_the_first_signal_sets_the_event_and_the_handlers_come_off() -> None:
    async def scenario() -> list[signal.Signals]:
        stop = asyncio.Event()
        handlers = install_shutdown(asyncio.get_running_loop(), stop, signals=(SIG,))
        await _deliver(1)
        assert stop.is_set()
        handlers.remove()
        return handlers.received

    previous = signal.signal(SIG, lambda *_: None)
    try:
        assert asyncio.run(scenario()) == [SIG]
    finally:
        signal.signal(SIG, previous)


def test_a_second_signal_exits_with_status_1(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        install_shutdown(asyncio.get_running_loop(), asyncio.Event(), signals=(SIG,))
        await _deliver(2)
        raise AssertionError("still running after the second signal")

    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as exited:
        asyncio.run(scenario())
    assert exited.value.code == 1
    assert "second SIGUSR1: exiting now" in caplog.text


def test_callables_for_the_first_and_the_later_signals() -> None:
    calls: list[tuple[str, signal.Signals]] = []

    async def scenario() -> None:
        install_shutdown(
            asyncio.get_running_loop(),
            lambda sig: calls.append(("first", sig)),
            on_second=lambda sig: calls.append(("again", sig)),
            signals=(SIG,),
        )
        await _deliver(3)

    asyncio.run(scenario())
    assert calls == [("first", SIG), ("again", SIG), ("again", SIG)]
