"""Structured logs: exec ids in exec lines, never env values or stdin bytes."""

from __future__ import annotations

import logging
import uuid

from execbus.agent.logs import JsonFormatter, TextFormatter
from tests.system.agent.harness import AgentFactory


async def test_logs_name_execs_but_never_env_values_or_stdin(agent_factory: AgentFactory) -> None:
    agent = agent_factory("--log-level", "debug")
    c = await agent.connect()
    exec_id = uuid.uuid4().hex
    try:
        await c.call(
            "start", exec_id=exec_id, cmd=["cat"], env=["TOKEN=env-secret-value"], stdin=True
        )
        await c.call("stdin", b"stdin-secret-bytes", exec_id=exec_id, close=True)
        await c.call("wait", exec_id=exec_id)
    finally:
        await c.close()
    lines = [e for e in agent.log_lines() if e.get("exec_id") == exec_id]
    assert {e["msg"] for e in lines} >= {"exec started", "exec finished"}
    assert all({"ts", "level", "logger"} <= e.keys() for e in lines)
    text = agent.log_text()
    assert "env-secret-value" not in text
    assert "stdin-secret-bytes" not in text


def test_formatters() -> None:
    record = logging.LogRecord("execbus.agent.x", logging.INFO, "f", 1, "exec %s", ("ok",), None)
    record.exec_id = "e1"
    assert TextFormatter().format(record).endswith("INFO execbus.agent.x: exec ok exec_id=e1")
    assert '"exec_id": "e1"' in JsonFormatter().format(record)
