"""Pool requests (``worker/pools.py``): placed on the least-loaded owned agent, or refused.

Real :class:`AgentRuntime` objects (embedded agents, never opened) marked as
owned, each with its real consumer; the broker is the in-memory double.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from execbus.connections.address import AgentAddress
from execbus.connections.factory import ConnectOptions
from execbus.errors import ConfigError
from execbus.settings import Settings
from execbus.testing.amqp import ACKED, REQUEUED, FakeDelivery, RecordingPublisher
from execbus.testing.waiting import wait_until
from execbus.wire.requests import CreateRequest, InspectRequest
from execbus.wire.routing import REASON_HEADER
from execbus.worker.consumer import RequestConsumer
from execbus.worker.metrics import WorkerMetrics
from execbus.worker.pools import PoolConsumer, parse_pool_spec
from execbus.worker.runtime import AgentRuntime

REPLY_TO = "amq.gen-caller"


def runtime(name: str, publisher: RecordingPublisher, owned: bool = True) -> AgentRuntime:
    rt = AgentRuntime(
        name, AgentAddress("local"), Settings(), ConnectOptions(), publisher, WorkerMetrics()
    )
    if owned:  # what taking the lease does, without a broker
        rt.owner = True
        rt.consumer = RequestConsumer(rt.execs, publisher, 4096)
    return rt


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher("t")


@pytest.fixture
async def runtimes(publisher: RecordingPublisher) -> AsyncIterator[list[AgentRuntime]]:
    made = [runtime("a2", publisher), runtime("a1", publisher), runtime("a3", publisher, False)]
    yield made
    for rt in made:
        await rt.connection.close()


def pool_delivery(request: CreateRequest | InspectRequest, **props: str) -> FakeDelivery:
    return FakeDelivery(
        request, reply_to=REPLY_TO, routing_key="pool.p1", correlation_id="c-1", **props
    )


def create(exec_id: str, pool: str | None = "p1") -> CreateRequest:
    return CreateRequest(pool=pool, exec_id=exec_id, config={"cmd": ["true"]})


async def test_a_request_goes_to_the_least_loaded_owned_agent(
    runtimes: list[AgentRuntime], publisher: RecordingPublisher
) -> None:
    a2, a1, a3 = runtimes
    pool = PoolConsumer("p1", runtimes, publisher, 4096)
    assert pool.owned() == [a2, a1]  # a3 is not owned here

    publisher.hold()  # the first request stays in flight on its agent ...
    first = pool_delivery(create("e1"))
    await pool.on_message(first)
    await wait_until(lambda: publisher.events, what="the first exec.created")
    assert (a1.load(), a2.load()) == (1, 0)  # ... equal loads: the name decided
    second = pool_delivery(create("e2"))
    await pool.on_message(second)  # ... so the next one goes to the other agent
    await wait_until(lambda: len(publisher.events) == 2, what="the second exec.created")
    publisher.release()
    assert await first.settled() == await second.settled() == ACKED

    assert a1.execs.registry.find("e1") and a2.execs.registry.find("e2")
    assert len(a3.execs.registry) == 0
    replies = {r.json()["exec_id"]: r.json() for r in publisher.replies}
    assert replies["e1"]["agent"] == "a1" and replies["e2"]["agent"] == "a2"
    assert [e.routing_key for e in publisher.events] == ["exec.a1.~.created", "exec.a2.~.created"]


async def test_without_an_owned_agent_the_request_goes_back_to_the_queue(
    publisher: RecordingPublisher,
) -> None:
    pool = PoolConsumer("p1", [runtime("a1", publisher, owned=False)], publisher, 4096)
    delivery = pool_delivery(create("e1"))
    await pool.on_message(delivery)
    assert delivery.settlements == [REQUEUED]
    assert publisher.published == []


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (
            InspectRequest(pool="p1", exec_id="e1"),
            "invalid: exec.inspect cannot go to a pool: address the exec's agent instead",
        ),
        (create("e1", pool="p2"), "invalid: request for pool 'p2' on pool 'p1'"),
    ],
    ids=["not-run-or-create", "other-pool"],
)
async def test_a_request_a_pool_cannot_take_is_dead_lettered(
    runtimes: list[AgentRuntime],
    publisher: RecordingPublisher,
    request_: CreateRequest | InspectRequest,
    reason: str,
) -> None:
    pool = PoolConsumer("p1", runtimes, publisher, 4096)
    delivery = pool_delivery(request_)
    await pool.on_message(delivery)
    assert await delivery.settled() == ACKED
    [dead] = publisher.dead_letters
    assert dead.headers[REASON_HEADER] == reason and dead.routing_key == "pool.p1"
    [reply] = publisher.replies
    assert reply.json()["ok"] is False and reply.correlation_id == "c-1"
    assert all(len(rt.execs.registry) == 0 for rt in runtimes)


async def test_an_oversized_pool_request_is_dead_lettered(
    runtimes: list[AgentRuntime], publisher: RecordingPublisher
) -> None:
    pool = PoolConsumer("p1", runtimes, publisher, 64)
    delivery = pool_delivery(create("e1"))
    await pool.on_message(delivery)
    assert await delivery.settled() == ACKED
    [dead] = publisher.dead_letters
    assert dead.headers[REASON_HEADER].startswith("invalid: message of ")
    assert dead.headers[REASON_HEADER].endswith("bytes exceeds the limit of 64")


def test_pool_specs() -> None:
    assert parse_pool_spec("p1=a1+a2") == ("p1", ["a1", "a2"])
    assert parse_pool_spec(" p1 = a1 + ") == ("p1", ["a1"])
    for bad in ("p1", "p1=", "=a1", "bad name=a1"):
        with pytest.raises(ConfigError, match="expected POOL=AGENT"):
            parse_pool_spec(bad)
