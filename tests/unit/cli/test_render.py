"""What the CLI prints: the ``ps`` table, ages, the command column (``cli/render.py``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from execbus.cli.render import ago, command_column, ps_table
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
