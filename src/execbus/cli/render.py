"""Turning exec records into what the user reads: JSON and the ``ps`` table."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from datetime import UTC, datetime

from execbus.wire.records import ExecInfo

COMMAND_WIDTH = 60
PS_HEADERS = ("EXEC ID", "STATE", "EXIT", "CREATED", "COMMAND")


def to_json(info: ExecInfo) -> str:
    """One record as indented JSON (bytes fields are base64, as on the wire)."""
    return info.model_dump_json(indent=2)


def list_json(execs: Sequence[ExecInfo]) -> str:
    """Records as an indented JSON array."""
    return json.dumps([info.model_dump(mode="json") for info in execs], indent=2)


def ago(when: datetime, now: datetime | None = None) -> str:
    """``"5 seconds ago"``, ``"3 minutes ago"``, ...: how long ago ``when`` was."""
    seconds = max(0, int(((now or datetime.now(UTC)) - when).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return f"{seconds} second{'s' if seconds != 1 else ''} ago"


def exit_column(info: ExecInfo) -> str:
    """The exit status (or the start failure's), ``-`` while there is none."""
    if info.exit is not None:
        return str(info.exit.exit_code)
    if info.error is not None and info.error.exit_code is not None:
        return str(info.error.exit_code)
    return "-"


def command_column(cmd: Sequence[str]) -> str:
    """The command line, shell-quoted, shortened to fit the table."""
    text = shlex.join(cmd)
    return text if len(text) <= COMMAND_WIDTH else text[: COMMAND_WIDTH - 3] + "..."


def ps_table(execs: Sequence[ExecInfo], now: datetime | None = None) -> str:
    """The ``ps`` table, oldest first, columns padded to their widest cell."""
    rows = [
        (i.exec_id, i.state.value, exit_column(i), ago(i.created_at, now), command_column(i.cmd))
        for i in sorted(execs, key=lambda info: info.created_at)
    ]
    widths = [max(len(row[col]) for row in [PS_HEADERS, *rows]) for col in range(4)]
    lines = []
    for row in [PS_HEADERS, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("   ".join([*cells, row[4]]))
    return "\n".join(lines)
