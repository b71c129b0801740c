"""The event loop choice of the worker and the CLI (``EXECBUS_EVENT_LOOP``)."""

from __future__ import annotations

import sys

import pytest

from execbus import loops
from execbus.errors import ConfigError
from execbus.settings import Settings


async def _which() -> str:
    return loops.loop_name()


def test_auto_uses_uvloop_when_installed() -> None:
    pytest.importorskip("uvloop")
    assert loops.run(_which(), "auto") == "uvloop"
    assert loops.run(_which(), "uvloop") == "uvloop"


def test_asyncio_forces_the_standard_loop() -> None:
    assert loops.run(_which(), "asyncio") == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes ``import uvloop`` fail
    assert loops.run(_which(), "auto") == "asyncio"
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        loops.run(_which(), "uvloop")


def test_the_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECBUS_EVENT_LOOP", "asyncio")
    assert Settings().event_loop == "asyncio"
    monkeypatch.setenv("EXECBUS_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="event_loop"):
        Settings()
