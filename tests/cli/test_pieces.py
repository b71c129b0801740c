"""The CLI's pure parts: the ``ps`` table, KEY=VALUE parsing, signal names."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import pytest

from execbus.cli.common import key_value
from execbus.cli.render import ago, command_column, ps_table
from execbus.client.config import signal_arg
from execbus.wire.records import ExecInfo, ExecState, ExitInfo

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_ps_table_has_the_columns() -> None:
    execs = [
        ExecInfo(exec_id="b" * 32, agent="a", state=ExecState.EXITED, cmd=["sh", "-c", "exit 3"],
                 created_at=NOW - timedelta(minutes=2), exit=ExitInfo(exit_code=3)),
        ExecInfo(exec_id="a" * 32, agent="a", state=ExecState.RUNNING, cmd=["sleep", "9"],
                 created_at=NOW - timedelta(seconds=5)),
    ]  # fmt: skip
    lines = ps_table(execs, now=NOW).splitlines()
    assert lines[0].split() == ["EXEC", "ID", "STATE", "EXIT", "CREATED", "COMMAND"]
    assert lines[1].split() == [
        "b" * 32,
        "exited",
        "3",
        "2",
        "minutes",
        "ago",
        "sh",
        "-c",
        "'exit",
        "3'",
    ]
    assert lines[2].split() == ["a" * 32, "running", "-", "5", "seconds", "ago", "sleep", "9"]


def test_ago_and_command_column() -> None:
    assert ago(NOW - timedelta(hours=1), now=NOW) == "1 hour ago"
    assert ago(NOW + timedelta(seconds=3), now=NOW) == "0 seconds ago"
    assert command_column(["x"] * 100).endswith("...")


def test_key_value() -> None:
    assert key_value("A=b=c") == ("A", "b=c")
    assert key_value("A=") == ("A", "")
    for bad in ("A", "=x"):
        with pytest.raises(argparse.ArgumentTypeError):
            key_value(bad)


def test_signal_arguments() -> None:
    assert signal_arg("9") == 9
    assert signal_arg("term") == "TERM"
    assert signal_arg(15) == 15


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
