"""The worker's logs: the agent's formatter, the worker's field policy."""

from __future__ import annotations

import json
import logging

from execbus.agent.logs import JsonFormatter, TextFormatter
from execbus.logs import WORKER_FIELDS


def record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("execbus.worker", logging.INFO, "f", 1, "exec %s", ("x",), None)
    rec.created, rec.msecs = 1764504041.062, 62.0
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_has_the_documented_keys_then_the_context_first_and_no_empty_field() -> None:
    rec = record(pid=42, exec_id="e1", container=None, code="command_not_found", agent="j1")
    doc = json.loads(JsonFormatter(WORKER_FIELDS).format(rec))
    assert list(doc) == ["ts", "level", "logger", "msg", "exec_id", "agent", "code", "pid"]
    assert doc["ts"] == "2025-11-30T12:00:41.062Z"
    assert (doc["level"], doc["logger"], doc["msg"]) == ("info", "execbus.worker", "exec x")


def test_text_is_one_line_with_the_same_timestamp_and_the_fields() -> None:
    rec = record(agent="j1", worker_id="w1", exec_id="e1", program="sh")
    line = TextFormatter(WORKER_FIELDS).format(rec)
    assert line == (
        "2025-11-30T12:00:41.062Z INFO execbus.worker: exec x "
        "exec_id=e1 agent=j1 worker_id=w1 program=sh"
    )
