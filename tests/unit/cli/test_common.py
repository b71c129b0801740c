"""The commands' shared parts: KEY=VALUE arguments, one-line unexpected errors
(``cli/common.py``)."""

from __future__ import annotations

import argparse

import pytest

from execbus.cli.common import key_value


def test_key_value() -> None:
    assert key_value("A=b=c") == ("A", "b=c")
    assert key_value("A=") == ("A", "")
    for bad in ("A", "=x"):
        with pytest.raises(argparse.ArgumentTypeError):
            key_value(bad)


def test_an_unexpected_error_is_one_line_and_a_traceback_only_at_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from execbus.cli import common

    async def broken(args: argparse.Namespace, settings: object) -> int:
        raise ValueError("cannot convert\nfloat NaN to integer")

    monkeypatch.setattr(common, "quiet_libraries", lambda: None)
    monkeypatch.delenv("EXECBUS_LOG_LEVEL", raising=False)
    args = argparse.Namespace(amqp_url=None, namespace=None)
    assert common.execute(broken, args) == common.EXIT_EXECBUS
    err = capsys.readouterr().err
    assert err.startswith("execbus: unexpected error: ValueError: cannot convert float NaN")
    assert err.count("\n") == 1
    monkeypatch.setenv("EXECBUS_LOG_LEVEL", "debug")
    with pytest.raises(ValueError):
        common.execute(broken, args)
