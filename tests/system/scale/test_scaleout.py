"""Scale-out with real processes: balance, failover after SIGKILL, joining, pool jobs."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from execbus.testing.cluster import Cluster, is_balanced
from execbus.testing.waiting import wait_until, wait_until_sync
from tests.system.integration.bus import Bus

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]
AGENTS = 30


@pytest.fixture
def cluster(amqp_url: str, namespace: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(amqp_url, namespace, tmp_path)
    try:
        yield c
    finally:
        c.stop()


def run_body(cmd: list[str]) -> dict[str, Any]:
    return {"v": 1, "type": "exec.run", "exec_id": uuid.uuid4().hex, "config": {"cmd": cmd}}


async def run_everywhere(bus: Bus, agents: list[str], cmd: list[str]) -> dict[str, dict[str, Any]]:
    corrs = {a: await bus.publish(f"agent.{a}", run_body(cmd)) for a in agents}
    return {a: await bus.reply(c, timeout=30) for a, c in corrs.items()}


async def test_balance_join_and_failover(
    amqp_url: str, namespace: str, cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_agents(AGENTS)
    for _ in range(3):
        cluster.start_worker()
    owners = wait_counts(cluster, [10, 10, 10], timeout=40)
    async with Bus(amqp_url, namespace) as bus:
        replies = await run_everywhere(bus, cluster.agent_names, ["true"])
        assert all(r["ok"] for r in replies.values())

        # A fourth worker joins: it takes about a quarter, requests keep flowing.
        before = owner_map(cluster)
        flowing = asyncio.create_task(keep_running(bus, cluster.agent_names, seconds=4.0))
        cluster.start_worker()
        owners = await asyncio.to_thread(wait_counts, cluster, [7, 7, 8, 8], 30)
        results = await flowing
        assert results and all(r["ok"] for r in results), [r for r in results if not r["ok"]]
        after = owner_map(cluster)
        moved_on_join = sum(1 for a in cluster.agent_names if before[a] != after[a])
        assert 7 <= moved_on_join <= 12, moved_on_join  # about A/W = 7.5

        # In-flight work on every agent, then SIGKILL one owner.
        await failover_without_loss(bus, cluster, owners, tmp_path / "effects")
        await asyncio.to_thread(wait_counts, cluster, [10, 10, 10], 30)


def wait_counts(cluster: Cluster, expected: list[int], timeout: float) -> dict[int, set[str]]:
    """Wait until the live workers own exactly ``expected`` agents each (sorted), every
    agent once: the assignment gives floor(A/W) or ceil(A/W), once the view is stable."""
    deadline = time.monotonic() + timeout
    owners: dict[int, set[str]] = {}
    while time.monotonic() < deadline:
        owners = cluster.ownership()
        if (
            is_balanced(owners, len(cluster.agent_names), slack=0)
            and sorted(len(v) for v in owners.values()) == expected
        ):
            return owners
        time.sleep(0.1)
    raise AssertionError(
        f"ownership never became {expected}: { {k: len(v) for k, v in owners.items()} }"
    )


def owner_map(cluster: Cluster) -> dict[str, int]:
    return {a: w for w, agents in cluster.ownership().items() for a in agents}


async def failover_without_loss(
    bus: Bus, cluster: Cluster, owners: dict[int, set[str]], marker: Path
) -> None:
    """Kill the owner of some agents mid-load: they serve again within 2 s, nothing
    is lost and nothing runs twice."""
    victim = next(w for w in cluster.live_workers() if owners.get(w.index))
    moved = sorted(owners[victim.index])
    inflight = {}
    for agent in cluster.agent_names:
        tag = f"{agent}-{uuid.uuid4().hex[:6]}"
        body = {
            "v": 1,
            "type": "exec.run",
            "exec_id": tag,
            "config": {"cmd": ["sh", "-c", f"echo {tag} >> {marker}; sleep 1"]},
        }
        inflight[tag] = await bus.publish(f"agent.{agent}", body)
    await wait_until(  # the work is in flight on every agent
        lambda: marker.exists() and len(marker.read_text().split()) == len(inflight),
        what="a command running on every agent",
    )
    killed_at = time.monotonic()
    cluster.kill_worker(victim)
    probes = {a: await bus.publish(f"agent.{a}", run_body(["true"])) for a in moved}
    took = {}
    for agent, corr in probes.items():
        reply = await bus.reply(corr, timeout=20)
        assert reply["ok"], reply
        took[agent] = time.monotonic() - killed_at
    assert max(took.values()) < 2.0, f"failover too slow: {took}"
    for corr in inflight.values():
        assert (await bus.reply(corr, timeout=30))["ok"]
    effects = Counter((await asyncio.to_thread(marker.read_text)).split())
    assert set(effects) == set(inflight) and max(effects.values()) == 1, effects


async def keep_running(bus: Bus, agents: list[str], seconds: float) -> list[dict[str, Any]]:
    """Requests to every agent, round after round, while ownership moves."""
    results = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        results += list((await run_everywhere(bus, agents, ["true"])).values())
    return results


async def test_pool_jobs_spread(amqp_url: str, namespace: str, cluster: Cluster) -> None:
    cluster.start_agents(6)
    cluster.pools = ["p=" + "+".join(cluster.agent_names)]
    for _ in range(2):
        cluster.start_worker()
    owners = cluster.wait_balanced(timeout=30)
    owner_of = {a: w for w, agents in owners.items() for a in agents}
    await asyncio.to_thread(  # pool consumers follow ownership
        wait_until_sync,
        lambda: all(((w.readyz() or {}).get("pools") or {}).get("p") for w in cluster.workers),
        30,
        what="every worker consuming pool p",
    )
    async with Bus(amqp_url, namespace) as bus:
        corrs = []
        for _ in range(40):
            body = {"v": 1, "type": "exec.run", "config": {"cmd": ["sh", "-c", "sleep 0.2"]}}
            corrs.append(await bus.publish("pool.p", body))
        replies = [await bus.reply(c, timeout=30) for c in corrs]
    assert all(r["ok"] for r in replies), replies
    by_agent = Counter(r["agent"] for r in replies)
    assert len(by_agent) >= 4, by_agent
    assert len({owner_of[a] for a in by_agent}) == 2, "both workers took pool jobs"


def test_is_balanced() -> None:
    assert is_balanced({0: {"a", "b"}, 1: {"c"}}, 3)
    assert not is_balanced({0: {"a", "b", "c"}, 1: set()}, 3)
    assert not is_balanced({0: {"a"}, 1: {"a", "b"}}, 2)
