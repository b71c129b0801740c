"""``exec_id`` is the idempotency key, whatever the AMQP message id: a retry gets the exec.

An orchestrator that lost its connection re-publishes the same request as a
new message (new ``message_id``). It must get the exec's outcome (or join its
waiters), never a conflict and never a second run. Checked over raw AMQP with
side-effect files counting the runs.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.system.integration.bus import Bus, unb64

pytestmark = pytest.mark.integration


@pytest.fixture
def agent_worker(start_agent: Any, start_worker: Any) -> tuple[Any, Any]:
    agent = start_agent("a1")
    worker = start_worker("--agent", f"a1={agent.address}")
    worker.wait_owner("a1")
    return agent, worker


def counting_run(marker: Path, script: str, **config: Any) -> dict[str, Any]:
    """An exec.run that appends a line to ``marker`` each time it really runs."""
    cmd = ["sh", "-c", f"echo ran >> {marker}; {script}"]
    return {
        "v": 1,
        "type": "exec.run",
        "exec_id": uuid.uuid4().hex,
        "config": {"cmd": cmd, **config},
    }


def runs(marker: Path) -> int:
    return marker.read_text().count("ran\n") if marker.exists() else 0


async def test_retry_of_a_finished_run_gets_the_recorded_outcome(
    amqp_url: str, namespace: str, agent_worker: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    body = counting_run(marker, r"printf '\373\377\277'; printf 'ab?' >&2; exit 3")
    async with Bus(amqp_url, namespace) as bus:
        first = await bus.reply(await bus.publish("agent.a1", body, message_id="first"))
        retry = await bus.reply(await bus.publish("agent.a1", body, message_id="second"))
    assert first["ok"] and first["replayed"] is False
    assert retry["ok"] and retry["replayed"] is True
    assert retry["result"]["exit"] == first["result"]["exit"]
    assert retry["result"]["exit"]["exit_code"] == 3
    assert retry["result"]["exit"]["stdout"] == "+/+/"  # standard base64, not "-_-_"
    assert unb64(retry["result"]["exit"]["stderr"]) == b"ab?"
    assert runs(marker) == 1


async def test_retry_of_a_running_run_joins_its_waiters(
    amqp_url: str, namespace: str, agent_worker: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    body = counting_run(marker, "sleep 1; echo done")
    async with Bus(amqp_url, namespace) as bus:
        first = await bus.publish("agent.a1", body, message_id="first")
        await bus.wait_event(body["exec_id"], "started")
        second = await bus.publish("agent.a1", body, message_id="second")
        one, two = await asyncio.gather(bus.reply(first), bus.reply(second))
        await bus.wait_event(body["exec_id"], "exited")
        events = bus.events_of(body["exec_id"])
    assert one["ok"] and two["ok"]
    assert (one["replayed"], two["replayed"]) == (False, True)
    assert unb64(two["result"]["exit"]["stdout"]) == b"done\n"
    assert two["result"]["exit"] == one["result"]["exit"]
    assert runs(marker) == 1
    assert [e["type"] for e in events].count("exec.exited") == 1


async def test_retry_of_a_running_exec_with_detach_answers_at_once(
    amqp_url: str, namespace: str, agent_worker: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    body = counting_run(marker, "sleep 30", detach=True)
    async with Bus(amqp_url, namespace) as bus:
        started = await bus.reply(await bus.publish("agent.a1", body))
        again = await bus.reply(await bus.publish("agent.a1", body))
        start_again = await bus.call(
            "a1", {"type": "exec.start", "exec_id": body["exec_id"], "detach": True}
        )
        await bus.call("a1", {"type": "exec.signal", "exec_id": body["exec_id"]})
    assert started["result"]["state"] == "running" and started["replayed"] is False
    for reply in (again, start_again):
        assert reply["ok"] and reply["replayed"] is True, reply
        assert reply["result"]["state"] == "running"
        assert reply["result"]["pid"] == started["result"]["pid"]
    assert runs(marker) == 1


async def test_a_different_config_under_the_same_id_is_a_conflict(
    amqp_url: str, namespace: str, agent_worker: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    body = counting_run(marker, "true")
    other = {**body, "config": {**body["config"], "env": ["X=1"]}}
    async with Bus(amqp_url, namespace) as bus:
        first = await bus.reply(await bus.publish("agent.a1", body))
        clash = await bus.reply(await bus.publish("agent.a1", other))
        created = await bus.call(
            "a1", {"type": "exec.create", "exec_id": body["exec_id"], "config": other["config"]}
        )
    assert first["ok"]
    for reply in (clash, created):
        assert reply["error"]["code"] == "conflict"
        assert "different config" in reply["error"]["message"]
    assert runs(marker) == 1


async def test_retry_reaches_the_outcome_across_a_worker_failover(
    amqp_url: str, namespace: str, start_agent: Any, start_worker: Any, tmp_path: Path
) -> None:
    """The new owner rebuilt the exec from the agent: a retry joins it, then replays it."""
    agent = start_agent("a1")
    first_worker = start_worker("--agent", f"a1={agent.address}")
    first_worker.wait_owner("a1")
    standby = start_worker("--agent", f"a1={agent.address}")
    marker = tmp_path / "ran"
    body = counting_run(marker, "sleep 1.5; echo survived")
    async with Bus(amqp_url, namespace) as bus:
        await bus.publish("agent.a1", body, message_id="first")
        await bus.wait_event(body["exec_id"], "started")
        first_worker.kill()  # SIGKILL: the caller's connection-less retry follows
        standby.wait_owner("a1")
        during = await bus.reply(await bus.publish("agent.a1", body), timeout=20)
        after = await bus.reply(await bus.publish("agent.a1", body))
    for reply in (during, after):
        assert reply["ok"] and reply["replayed"] is True, reply
        assert unb64(reply["result"]["exit"]["stdout"]) == b"survived\n"
    assert runs(marker) == 1
