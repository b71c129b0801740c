"""A run's result from its reply or its exit event (``client/execution.py``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from execbus.client.execution import run_result
from execbus.client.results import exit_code_of
from execbus.errors import CommandNotFound
from execbus.wire.events import ExitedEvent, FailedEvent
from execbus.wire.records import ErrorInfo, ExitInfo
from execbus.wire.replies import Reply

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_run_result_prefers_the_reply_then_the_event() -> None:
    exit_info = ExitInfo(exit_code=3, stdout=b"out")
    event = ExitedEvent(event_id="x", agent="a", exec_id="e1", time=NOW, exit=exit_info)
    result = run_result("e1", None, event)
    assert (result.exit_code, result.stdout, result.info) == (3, b"out", None)
    failure = Reply.failure("command_not_found", "nope", exit_code=127)
    with pytest.raises(CommandNotFound) as caught:
        run_result("e1", failure, None)
    assert exit_code_of(caught.value) == 127
    error = ErrorInfo(code="command_not_found", message="nope", exit_code=127)
    failed = FailedEvent(event_id="y", agent="a", exec_id="e1", time=NOW, error=error)
    with pytest.raises(CommandNotFound):
        run_result("e1", None, failed)
