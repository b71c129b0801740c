"""Fault injection: kill workers, restart the broker, cut connections, restart agents.

Every test counts what was lost and what ran twice (each command appends its
id to a file: its side effect). Both must be zero.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from execbus import Client
from execbus.testing.broker import PrivateBroker
from execbus.testing.broker import available as broker_available
from execbus.testing.faultproxy import FaultProxy
from execbus.testing.waiting import wait_until, wait_until_sync
from tests.system.integration.bus import Bus

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(120)]


def appending_run(marker: Path, tag: str, sleep: float) -> dict[str, Any]:
    script = f"echo {tag} >> {marker}; sleep {sleep}; echo done-{tag}"
    return {"v": 1, "type": "exec.run", "exec_id": tag, "config": {"cmd": ["sh", "-c", script]}}


def side_effects(marker: Path) -> Counter[str]:
    if not marker.exists():
        return Counter()
    return Counter(marker.read_text().split())


async def collect(bus: Bus, corrs: dict[str, str], timeout: float) -> dict[str, dict[str, Any]]:
    """Replies by exec id; an exec counts as answered by its reply or its exit event."""
    results: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(timeout):
        while len(results) < len(corrs):
            for tag, corr in corrs.items():
                fut = bus.replies[corr]
                if tag not in results and fut.done():
                    results[tag] = fut.result()
            for event in bus.events:
                if event["type"] in ("exec.exited", "exec.failed") and event["exec_id"] in corrs:
                    results.setdefault(event["exec_id"], {"event": event})
            await asyncio.sleep(0.05)
    return results


def exit_events(bus: Bus) -> Counter[str]:
    """Distinct exit events per exec (duplicates by event_id dropped, as a client does)."""
    seen: dict[str, str] = {}
    for event in bus.events:
        if event["type"] in ("exec.exited", "exec.failed"):
            seen[event["event_id"]] = event["exec_id"]
    return Counter(seen.values())


async def test_sigkill_active_worker_standby_takes_over(
    amqp_url: str, namespace: str, start_agent: Any, start_worker: Any, tmp_path: Path
) -> None:
    agent = start_agent("a1")
    workers = [start_worker("--agent", f"a1={agent.address}") for _ in range(2)]
    # Whichever the assignment picked (and the other is its standby).
    active = wait_until_sync(
        lambda: next((w for w in workers if "a1" in w.serving()), None), 15, what="an owner"
    )
    standby = next(w for w in workers if w is not active)
    marker = tmp_path / "effects"
    async with Bus(amqp_url, namespace) as bus:
        corrs = {}
        for i in range(24):
            tag = f"x{i}"
            body = appending_run(marker, tag, 2.0 if i % 3 == 0 else 0.05)
            corrs[tag] = await bus.publish("agent.a1", body)
        await bus.wait_event("x0", "started")
        active.kill()
        standby.wait_owner("a1", timeout=20)
        results = await collect(bus, corrs, timeout=40)
    assert set(results) == set(corrs), "every exec answered"
    assert all(count == 1 for count in exit_events(bus).values()), exit_events(bus)
    assert set(exit_events(bus)) == set(corrs), "every exit notified"
    effects = side_effects(marker)
    assert set(effects) == set(corrs) and max(effects.values()) == 1, effects


async def test_cut_worker_broker_connection_mid_load(
    amqp_url: str, namespace: str, start_agent: Any, start_worker: Any, tmp_path: Path
) -> None:
    agent = start_agent("a1")
    with FaultProxy("127.0.0.1", 5672) as proxy:
        proxied = amqp_url.replace(":5672", f":{proxy.port}")
        worker = start_worker("--agent", f"a1={agent.address}", env={"EXECBUS_AMQP_URL": proxied})
        worker.wait_owner("a1")
        marker = tmp_path / "effects"
        async with Bus(amqp_url, namespace) as bus:
            corrs = {}
            for i in range(30):
                tag = f"c{i}"
                corrs[tag] = await bus.publish("agent.a1", appending_run(marker, tag, 0.3))
                if i == 12:
                    proxy.cut()
            results = await collect(bus, corrs, timeout=60)
    assert set(results) == set(corrs)
    assert set(exit_events(bus)) == set(corrs), "every exit notified after the cut"
    effects = side_effects(marker)
    assert set(effects) == set(corrs) and max(effects.values()) == 1, effects


async def test_agent_killed_and_restarted(
    amqp_url: str, namespace: str, start_agent: Any, start_worker: Any, tmp_path: Path
) -> None:
    agent = start_agent("a1")
    worker = start_worker("--agent", f"a1={agent.address}")
    worker.wait_owner("a1")
    async with Bus(amqp_url, namespace) as bus:
        long_body = {
            "v": 1,
            "type": "exec.run",
            "exec_id": "long1",
            "config": {"cmd": ["sleep", "30"]},
        }
        corr = await bus.publish("agent.a1", long_body)
        await bus.wait_event("long1", "started")
        agent.kill()
        start_agent("a1", socket_path=agent.socket_path)
        reply = await bus.reply(corr, timeout=30)
        assert reply["ok"] is False and reply["error"]["code"] == "agent_lost", reply
        event = await bus.wait_event("long1", "failed")
        assert "gone" in event["error"]["message"]
        state = await bus.call("a1", {"type": "exec.inspect", "exec_id": "long1"})
        assert state["result"]["state"] == "failed", "never left running"
        after = await bus.call(
            "a1", {"type": "exec.run", "exec_id": "after1", "config": {"cmd": ["true"]}}
        )
        assert after["ok"], after


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
            max_leaves=20,
        ).map(lambda doc: json.dumps(doc).encode()),
        st.fixed_dictionaries(
            {
                "v": st.sampled_from([0, 1, 2, "1"]),
                "type": st.sampled_from(
                    ["exec.run", "exec.inspect", "exec.signal", "exec.stdin", "x"]
                ),
            },
            optional={
                "exec_id": st.text(max_size=10),
                "config": st.dictionaries(
                    st.sampled_from(["cmd", "env", "user", "timeout"]),
                    st.none()
                    | st.integers()
                    | st.text(max_size=5)
                    | st.lists(st.text(max_size=5), max_size=3),
                ),
            },
        ).map(lambda doc: json.dumps(doc).encode()),
    )
)
def test_hostile_input_is_answered_or_dead_lettered(hostile_bus: Any, body: bytes) -> None:
    reply = hostile_bus(body)
    assert isinstance(reply, dict) and "ok" in reply
    if not reply["ok"]:
        assert reply["error"]["code"] in {
            "invalid",
            "not_found",
            "conflict",
            "command_not_found",
            "unknown_user",
            "command_not_executable",
            "start_failed",
        }, reply


@pytest.fixture
def hostile_bus(amqp_url: str, namespace: str, start_worker: Any) -> Any:
    """A synchronous sender for hypothesis (its own loop per call)."""
    worker = start_worker()
    worker.wait_owner("local")

    def send(body: bytes) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            async with Bus(amqp_url, namespace) as bus:
                corr = await bus.publish("agent.local", body)
                return await bus.reply(corr, timeout=10)

        return asyncio.run(go())

    yield send
    assert worker.proc.poll() is None, "the worker never crashes on input"
    doc = worker.readyz()
    assert doc is not None and doc["ready"]


async def test_sigterm_drains_gracefully(
    amqp_url: str, namespace: str, start_agent: Any, start_worker: Any, tmp_path: Path
) -> None:
    agent = start_agent("a1")
    first = start_worker("--agent", f"a1={agent.address}")
    first.wait_owner("a1")
    second = start_worker("--agent", f"a1={agent.address}")
    marker = tmp_path / "effects"
    async with Bus(amqp_url, namespace) as bus:
        corrs = {}
        for i in range(30):
            tag = f"t{i}"
            corrs[tag] = await bus.publish("agent.a1", appending_run(marker, tag, 0.2))
        await bus.wait_event("t0", "started")
        assert first.terminate(timeout=30) == 0, first.log()
        second.wait_owner("a1", timeout=20)
        results = await collect(bus, corrs, timeout=60)
    assert set(results) == set(corrs)
    effects = side_effects(marker)
    assert set(effects) == set(corrs) and max(effects.values()) == 1, effects


@pytest.fixture(scope="module")
def private_broker() -> Iterator[PrivateBroker]:
    """A RabbitMQ node of our own: restarting it leaves the shared broker alone."""
    if not broker_available():
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs rabbitmq-server and root for the broker-restart test")
        pytest.skip("needs rabbitmq-server, rabbitmqctl and root")
    with PrivateBroker() as broker:
        yield broker


async def test_broker_restart_under_load(
    private_broker: PrivateBroker,
    namespace: str,
    start_agent: Any,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    agent = start_agent("a1")
    worker = start_worker(
        "--agent", f"a1={agent.address}", env={"EXECBUS_AMQP_URL": private_broker.url}
    )
    worker.wait_owner("a1")
    marker = tmp_path / "effects"

    def cmd(tag: str, sleep: float) -> list[str]:
        return ["sh", "-c", f"echo {tag} >> {marker}; sleep {sleep}"]

    async with Client(private_broker.url, namespace=namespace) as client:
        during = [
            asyncio.create_task(client.run("a1", cmd(f"b{i}", 1.5), exec_id=f"b{i}"))
            for i in range(10)
        ]
        await wait_until(  # every command is running when the broker goes
            lambda: marker.exists() and len(marker.read_text().split()) == 10,
            what="the ten commands started",
        )
        await asyncio.to_thread(private_broker.restart)
        results = await asyncio.wait_for(asyncio.gather(*during), 60)
        assert [r.exit_code for r in results] == [0] * 10, "no request or exit lost"
        await asyncio.to_thread(worker.wait_owner, "a1", 30)
        after = await asyncio.wait_for(
            asyncio.gather(
                *(client.run("a1", cmd(f"b{i}", 0), exec_id=f"b{i}") for i in range(10, 20))
            ),
            60,
        )
        assert [r.exit_code for r in after] == [0] * 10, "consumers are really consuming again"
    effects = side_effects(marker)
    assert len(effects) == 20 and max(effects.values()) == 1, effects


async def test_worker_and_agent_killed_together_still_answer(
    amqp_url: str, namespace: str, start_agent: Any, start_worker: Any, tmp_path: Path
) -> None:
    """The agent's journal (--state-dir) reports what a killed agent lost to any new owner."""
    state = tmp_path / "agent-state"
    agent = start_agent("a1", "--state-dir", str(state))
    first = start_worker("--agent", f"a1={agent.address}")
    first.wait_owner("a1")
    second = start_worker("--agent", f"a1={agent.address}")
    async with Bus(amqp_url, namespace) as bus:
        body = {"v": 1, "type": "exec.run", "exec_id": "both1", "config": {"cmd": ["sleep", "30"]}}
        corr = await bus.publish("agent.a1", body)
        await bus.wait_event("both1", "started")
        first.kill()
        agent.kill()
        start_agent("a1", "--state-dir", str(state), socket_path=agent.socket_path)
        second.wait_owner("a1", timeout=20)
        reply = await bus.reply(corr, timeout=30)
        assert reply["ok"] is False and reply["error"]["code"] == "agent_lost", reply
        event = await bus.wait_event("both1", "failed")
        assert "restarted" in event["error"]["message"]
    assert list(state.glob("*.exec.json")) == [], "acknowledged: the journal is empty again"
