"""``--log-format json``: every line of the worker and the agent is one JSON object."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.system.integration.bus import Bus

pytestmark = pytest.mark.integration


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a log file, each of which must be a JSON object with ts/level/msg."""
    docs = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path.name}: not a JSON line: {line!r}") from None
        assert isinstance(doc, dict), line
        assert {"ts", "level", "msg"} <= doc.keys(), line
        assert doc["level"] in ("debug", "info", "warning", "error", "critical"), line
        assert doc["ts"].endswith("Z") and "T" in doc["ts"], line
        docs.append(doc)
    return docs


def lines_of(path: Path, exec_id: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The log lines carrying ``exec_id``, once there are some (logs are flushed per line)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [d for d in json_lines(path) if d.get("exec_id") == exec_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


async def test_worker_and_agent_log_json_lines(
    amqp_url: str, namespace: str, start_agent: Any, start_worker: Any
) -> None:
    agent = start_agent("j1", "--log-format", "json")
    worker = start_worker("--agent", f"j1={agent.address}", env={"EXECBUS_LOG_FORMAT": "json"})
    worker.wait_owner("j1")
    ok_id, failed_id = uuid.uuid4().hex, uuid.uuid4().hex
    async with Bus(amqp_url, namespace) as bus:
        ok = await bus.call(
            "j1", {"type": "exec.run", "exec_id": ok_id, "config": {"cmd": ["true"]}}
        )
        assert ok["ok"], ok
        failed = await bus.call(
            "j1", {"type": "exec.run", "exec_id": failed_id, "config": {"cmd": ["/no/such"]}}
        )
        assert failed["error"]["code"] == "command_not_found"

    worker_docs = json_lines(worker.log_path)
    assert any("owner" in d["msg"] and d.get("agent") == "j1" for d in worker_docs), worker_docs
    for exec_id in (ok_id, failed_id):
        mine = lines_of(worker.log_path, exec_id)
        assert mine, f"the worker logged nothing about exec {exec_id}"
        assert all(d["agent"] == "j1" for d in mine), mine
    assert any(d["level"] == "info" for d in lines_of(worker.log_path, failed_id)), (
        "a failed exec is logged at info"
    )
    # Every worker line that names an exec also names its agent.
    assert all("agent" in d for d in worker_docs if "exec_id" in d)

    agent_docs = json_lines(agent.log_path)
    assert any(d["msg"] == "agent ready" for d in agent_docs), agent_docs
    started = [d for d in lines_of(agent.log_path, ok_id) if d["msg"] == "exec started"]
    assert started and started[0]["pid"] > 0, agent_docs
    finished = [d for d in lines_of(agent.log_path, ok_id) if d["msg"] == "exec finished"]
    assert finished and finished[0]["exit_code"] == 0, agent_docs
    refused = lines_of(agent.log_path, failed_id)
    assert any(d.get("code") == "command_not_found" for d in refused), refused
