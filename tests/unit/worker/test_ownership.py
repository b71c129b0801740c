"""The ownership loop's per-agent steps at a cold start (no broker: the step decided).

RabbitMQ before 4.1 closes a connection when a consumer races the creation of a
quorum queue, so an agent's queues are declared one interval before this worker
gets in line, and a standby gets in line only behind an owner someone announces.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from types import SimpleNamespace
from typing import Any, cast

import pytest

from execbus.wire.routing import Names
from execbus.worker.ownership import OwnershipLoop
from execbus.worker.runtime import AgentRuntime, Role

INTERVAL = 1.0


@dataclasses.dataclass
class FakeLease:
    subscribed: bool = False


@dataclasses.dataclass
class FakeRuntime:
    """The attributes and coroutines of AgentRuntime that the loop's step reads."""

    name: str
    role: Role = Role.NONE
    owner: bool = False
    declared_at: float | None = None
    held_for: float = 0.0
    lease: FakeLease = dataclasses.field(default_factory=FakeLease)
    calls: list[str] = dataclasses.field(default_factory=list)

    def owned_for(self) -> float:
        return self.held_for

    def link(self) -> None:
        return None

    def load(self) -> int:
        return 0

    async def set_role(self, role: Role, session: Any) -> None:
        self.calls.append(f"set_role:{role.value}")

    async def hand_over(self, session: Any, quiet: float) -> None:
        self.calls.append("hand_over")

    async def declare_queues(self, channel: Any) -> None:
        self.calls.append("declare")

    def stop_contending(self) -> None:
        self.calls.append("stop_contending")


def make_loop(runtime: FakeRuntime) -> OwnershipLoop:
    runtimes = cast(dict[str, AgentRuntime], {runtime.name: runtime})
    return OwnershipLoop("w1", Names("ns"), runtimes, INTERVAL, 3.0, frozenset())


async def run_step(
    loop: OwnershipLoop, rt: FakeRuntime, role: Role, owned: bool, now: float
) -> str:
    """The name of the step the loop takes ("" for none), run to its end."""
    step = loop._step(cast(AgentRuntime, rt), role, owned, now, cast(Any, None))
    if step is None:
        return ""
    if step.cr_code.co_name == "_declare":  # type: ignore[attr-defined]
        step.close()
        return "declare"
    before = len(rt.calls)
    await step
    return rt.calls[before]


async def test_an_owner_declares_first_and_gets_in_line_an_interval_later() -> None:
    rt = FakeRuntime("a1")
    loop = make_loop(rt)
    assert await run_step(loop, rt, Role.OWNER, owned=False, now=100.0) == "declare"
    rt.declared_at = 100.0
    assert await run_step(loop, rt, Role.OWNER, owned=False, now=100.5) == ""
    assert await run_step(loop, rt, Role.OWNER, owned=False, now=101.0) == "set_role:owner"


async def test_a_standby_waits_for_an_announced_owner() -> None:
    rt = FakeRuntime("a1", declared_at=0.0)
    loop = make_loop(rt)
    assert await run_step(loop, rt, Role.STANDBY, owned=False, now=100.0) == ""
    assert await run_step(loop, rt, Role.STANDBY, owned=True, now=100.0) == "set_role:standby"


async def test_a_standby_already_in_line_stays_in_line_when_the_owner_vanishes() -> None:
    rt = FakeRuntime("a1", role=Role.STANDBY, declared_at=0.0, lease=FakeLease(subscribed=True))
    loop = make_loop(rt)
    # No owner announced any more: it stays in line (set_role keeps a lease it is
    # subscribed to), so the dead owner's token comes to it.
    assert await run_step(loop, rt, Role.STANDBY, owned=False, now=100.0) == "set_role:standby"
    rt.owner = True
    rt.held_for = 1.0  # it got the token: it keeps it until the view has settled
    assert await run_step(loop, rt, Role.STANDBY, owned=True, now=100.0) == ""
    rt.held_for = 10.0
    assert await run_step(loop, rt, Role.STANDBY, owned=True, now=100.0) == "hand_over"


async def test_leaving_needs_no_declare() -> None:
    rt = FakeRuntime("a1", role=Role.OWNER, owner=True)
    loop = make_loop(rt)
    assert await run_step(loop, rt, Role.NONE, owned=True, now=100.0) == "set_role:none"
    rt.role = Role.NONE
    assert await run_step(loop, rt, Role.NONE, owned=True, now=100.0) == ""


async def test_role_changes_run_one_at_a_time_per_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = FakeRuntime("a1")
    loop = make_loop(rt)
    release = asyncio.Event()
    started: list[int] = []

    async def change(n: int) -> None:
        started.append(n)
        await release.wait()

    loop._change_role("a1", change(1))
    loop._change_role("a1", change(2))  # dropped: one is pending for a1
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert started == [1]
    release.set()
    await asyncio.gather(*loop._tasks)
    loop._change_role("a1", change(3))
    await asyncio.gather(*loop._tasks)
    assert started == [1, 3]


# -- a stopping worker takes nothing over ----------------------------------------------


class FakeControl:
    """The session, channel and control exchange the loop announces on (one object)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    async def channel(self) -> FakeControl:
        return self

    async def get_exchange(self, name: str, ensure: bool = True) -> FakeControl:
        return self

    async def publish(self, message: Any, routing_key: str, mandatory: bool = True) -> None:
        self.published.append((routing_key, json.loads(message.body)))


def two_agent_loop() -> tuple[OwnershipLoop, dict[str, FakeRuntime]]:
    """This worker (w1) and its two agents, each declared long ago and held by nobody."""
    runtimes = {name: FakeRuntime(name, declared_at=0.0) for name in ("a1", "a2")}
    loop = OwnershipLoop(
        "w1", Names("ns"), cast(dict[str, AgentRuntime], runtimes), INTERVAL, 3.0, frozenset()
    )
    return loop, runtimes


async def hear(loop: OwnershipLoop, owned: set[str], stopping: bool = False) -> None:
    """An announcement of the peer w2, which reaches both agents."""
    doc = {"worker_id": "w2", "agents": ["a1", "a2"], "owned": sorted(owned), "stopping": stopping}
    await loop._on_announcement(cast(Any, SimpleNamespace(body=json.dumps(doc).encode())))


async def a_peer_that_owned_an_agent_stops(loop: OwnershipLoop) -> str:
    """w2 owns one of the two agents, then announces that it is stopping; that agent."""
    await hear(loop, set())
    theirs = {"a1", "a2"} - loop.membership.mine()
    assert len(theirs) == 1, "two workers share two agents"
    (agent,) = theirs
    await hear(loop, theirs)
    loop._wake.clear()
    await hear(loop, theirs, stopping=True)
    assert loop._wake.is_set(), "a stopping peer wakes the loop at once"
    return agent


async def test_a_stopping_peers_agent_comes_here_at_once() -> None:
    """The control case of the next test: not stopping, this worker takes it."""
    loop, runtimes = two_agent_loop()
    session = FakeControl()
    agent = await a_peer_that_owned_an_agent_stops(loop)
    await loop.reconcile(cast(Any, session))
    assert agent in loop._changing
    await asyncio.gather(*loop._tasks)
    assert runtimes[agent].calls == ["set_role:owner"]


async def test_a_stopping_worker_takes_nothing_over() -> None:
    loop, runtimes = two_agent_loop()
    session = FakeControl()
    await loop.announce_stopping(cast(Any, session))
    assert [rt.calls for rt in runtimes.values()] == [["stop_contending"]] * 2
    [(key, announced)] = session.published
    assert (key, announced["stopping"]) == ("worker.w1", True)
    await a_peer_that_owned_an_agent_stops(loop)
    await loop.reconcile(cast(Any, session))
    assert not loop._changing and not loop._tasks, "a role change was scheduled"
    assert [rt.calls for rt in runtimes.values()] == [["stop_contending"]] * 2


async def test_a_change_of_ownership_wakes_the_loop_to_announce_it() -> None:
    rt = FakeRuntime("a1")
    loop = make_loop(rt)
    assert not loop._wake.is_set()
    rt.on_owner_change()  # type: ignore[attr-defined]  # set by the loop
    assert loop._wake.is_set()
