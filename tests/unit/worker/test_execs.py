"""The worker's use cases (``AgentExecs``) against a real in-process agent.

The broker is replaced by an in-memory outbox here on purpose: these tests pin
the use-case logic (event order while confirms are outstanding, when the
delivery may be settled, agent acks, record compaction); the same flows run
against a real RabbitMQ in tests/system/integration.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from execbus.connections.local import LocalAgentClient
from execbus.connections.retry import RetryPolicy
from execbus.registry import ExecRegistry
from execbus.wire.requests import RunRequest
from execbus.wire.routing import Names
from execbus.worker.context import ReplyTarget, RequestContext
from execbus.worker.ends import ExecEnds
from execbus.worker.execs import AgentExecs
from execbus.worker.state import AgentState
from execbus.worker.watch import AgentWatch


class SlowConfirmOutbox:
    """Records publishes in the order they start; confirms arrive after ``delay``."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.sent: list[tuple[str, Any]] = []
        self.confirmed: list[str] = []

    async def event(self, routing_key: str, event: BaseModel, event_id: str) -> None:
        kind = routing_key.rsplit(".", 1)[-1]
        self.sent.append((kind, event))
        await asyncio.sleep(self.delay)
        self.confirmed.append(kind)

    async def reply(self, reply_to: str, correlation_id: str | None, reply: BaseModel) -> None:
        self.sent.append(("reply", reply))


class CountingAgent(LocalAgentClient):
    """The embedded agent, counting the acks the worker sends it."""

    acks = 0

    async def ack(self, exec_id: str) -> None:
        self.acks += 1
        await super().ack(exec_id)


@pytest.fixture
async def agent() -> AsyncIterator[CountingAgent]:
    client = CountingAgent("a1", call_timeout=5.0, heartbeat=5.0)
    yield client
    await client.close()


async def _execs(agent: CountingAgent, outbox: SlowConfirmOutbox) -> AgentExecs:
    return (await _wired(agent, outbox))[0]


async def _wired(agent: CountingAgent, outbox: SlowConfirmOutbox) -> tuple[AgentExecs, AgentWatch]:
    """The use cases and the listener of agent ``a1``, wired as the runtime does."""
    retry = RetryPolicy(attempts=2)
    state = AgentState.build("a1", ExecRegistry("a1"), agent, outbox, retry, Names("t"))
    ends = ExecEnds(state)
    watch = AgentWatch(state, ends)
    await agent.open(watch)
    return AgentExecs(state, ends), watch


async def _run(execs: AgentExecs, cmd: list[str]) -> Any:
    request = RunRequest(exec_id=uuid.uuid4().hex, config={"cmd": cmd})
    ctx = RequestContext(reply=ReplyTarget("client-q", "c1"), request_id=uuid.uuid4().hex)
    return request, await execs.handle(request, ctx)


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_events_keep_order_while_confirms_are_slow(agent: CountingAgent) -> None:
    outbox = SlowConfirmOutbox(delay=0.05)
    execs = await _execs(agent, outbox)
    _, outcome = await _run(execs, ["true"])
    assert outcome.reply is None  # a run is answered at its exit
    # The request returns before the confirms of its events arrive ...
    assert outcome.confirms and not all(f.done() for f in outcome.confirms)
    settled = await outcome.after_confirms()
    assert settled is outcome and all(f.done() for f in outcome.confirms)
    await _until(lambda: any(kind == "reply" for kind, _ in outbox.sent))
    kinds = [kind for kind, _ in outbox.sent]
    # ... and the events still went out in lifecycle order, the waiting caller's
    # reply ahead of the exit event.
    assert kinds.index("created") < kinds.index("started") < kinds.index("exited")
    assert kinds.index("reply") < kinds.index("exited")


async def test_a_failed_confirm_requeues_without_a_reply(agent: CountingAgent) -> None:
    from execbus.errors import PublishFailed

    class FailingOutbox(SlowConfirmOutbox):
        async def event(self, routing_key: str, event: BaseModel, event_id: str) -> None:
            if routing_key.endswith(".started"):
                raise PublishFailed("no publisher confirm within 0.1 s")
            await super().event(routing_key, event, event_id)

    execs = await _execs(agent, FailingOutbox())
    _, outcome = await _run(execs, ["sleep", "0.2"])
    settled = await outcome.after_confirms()
    assert settled.reply is None and settled.disposition.action.value == "requeue"


async def test_the_agent_is_acked_once_and_the_record_compacted(agent: CountingAgent) -> None:
    outbox = SlowConfirmOutbox()
    execs, watch = await _wired(agent, outbox)
    exits: list[Any] = []
    on_exit = watch.on_exit

    async def recording_on_exit(name: str, state: Any) -> None:
        exits.append(state)
        await on_exit(name, state)

    watch.on_exit = recording_on_exit  # type: ignore[method-assign]
    runs = [await _run(execs, ["true"]) for _ in range(20)]
    records = [execs.registry.get(request.exec_id) for request, _ in runs]
    await _until(lambda: all(r.final_published and r.agent_acked for r in records))
    assert agent.acks == 20
    # An exit can reach the worker twice (with a slow start's reply, and on its
    # own): the second copy must not cost another agent round trip.
    for state in list(exits):
        await watch.on_exit("a1", state)
    assert agent.acks == 20
    assert sum(kind == "exited" for kind, _ in outbox.sent) == 20
    assert all(r.compacted for r in records)
    assert all(r.info().exit is not None and r.info().exit.exit_code == 0 for r in records)
