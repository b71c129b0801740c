"""The consumer (``worker/consumer.py``): each delivery ends in one ack, requeue or dead letter.

The broker is the in-memory double of ``execbus.testing.amqp``; the
consumer, the use cases, the registry and the guard are the real ones. The
same paths run against a real RabbitMQ in the system tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from execbus.connections.local import LocalAgentClient
from execbus.connections.retry import RetryPolicy
from execbus.errors import PublishFailed
from execbus.registry import ExecRegistry
from execbus.settings import Settings
from execbus.testing.amqp import ACKED, REJECTED, REQUEUED, FakeDelivery, RecordingPublisher
from execbus.testing.waiting import wait_until
from execbus.wire.requests import CreateRequest, InspectRequest, Request
from execbus.wire.routing import REASON_HEADER
from execbus.worker.acks import Action, Disposition
from execbus.worker.consumer import RequestConsumer
from execbus.worker.context import RequestContext
from execbus.worker.ends import ExecEnds
from execbus.worker.execs import AgentExecs
from execbus.worker.guard import RequestGuard
from execbus.worker.limits import RequestLimits
from execbus.worker.policy_file import parse_policy
from execbus.worker.state import AgentState

REPLY_TO = "amq.gen-caller"
MAX_BYTES = 4096
HOST_RULE = {"containers": [""], "users": [""]}  # the agent's host, its default user
LIMITS = RequestLimits.from_settings(Settings())


@dataclass
class Worker:
    """One agent's consumer over the recording publisher."""

    consumer: RequestConsumer
    publisher: RecordingPublisher
    execs: AgentExecs
    observed: list[tuple[str, Disposition]]

    async def deliver(self, delivery: FakeDelivery) -> FakeDelivery:
        """Hand ``delivery`` to the consumer and wait until it is settled."""
        await self.consumer.on_message(delivery)
        await delivery.settled()
        await wait_until(lambda: not self.consumer.inflight)
        return delivery

    def reply(self) -> dict[str, object]:
        [reply] = self.publisher.replies
        assert reply.routing_key == REPLY_TO
        body: dict[str, object] = reply.json()
        return body


def build_worker(authorize: RequestGuard | None = None) -> Worker:
    publisher = RecordingPublisher("t")
    agent = LocalAgentClient("a1", call_timeout=5.0, heartbeat=5.0)  # never opened here
    state = AgentState.build(
        "a1", ExecRegistry("a1"), agent, publisher, RetryPolicy(attempts=1), publisher.names
    )
    execs = AgentExecs(state, ExecEnds(state))
    observed: list[tuple[str, Disposition]] = []
    consumer = RequestConsumer(
        execs,
        publisher,
        MAX_BYTES,
        observe=lambda kind, disposition, _: observed.append((kind, disposition)),
        authorize=authorize.for_agent("a1", execs.registry) if authorize else None,
    )
    return Worker(consumer, publisher, execs, observed)


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    w = build_worker()
    yield w
    await w.execs.state.connection.close()


def create(exec_id: str = "e1", **config: object) -> CreateRequest:
    return CreateRequest(exec_id=exec_id, config={"cmd": ["true"], **config})


def delivery(request: Request | bytes, **props: object) -> FakeDelivery:
    props.setdefault("reply_to", REPLY_TO)
    props.setdefault("correlation_id", "c-1")
    return FakeDelivery(request, **props)  # type: ignore[arg-type]


async def test_a_valid_request_is_answered_then_acked(worker: Worker) -> None:
    d = await worker.deliver(delivery(create(), message_id="m-1"))
    assert d.settlement == ACKED
    reply = worker.reply()
    assert reply["ok"] is True and reply["exec_id"] == "e1" and reply["agent"] == "a1"
    assert worker.publisher.replies[0].correlation_id == "c-1"
    assert worker.publisher.replies[0].type == "reply"
    assert [e.routing_key for e in worker.publisher.events] == ["exec.a1.~.created"]
    assert worker.publisher.dead_letters == []
    assert worker.observed == [("exec.create", Disposition.ack())]
    assert worker.execs.registry.get("e1").exec_id == "e1"


async def test_a_redelivered_create_without_exec_id_replays_the_same_exec(worker: Worker) -> None:
    request = CreateRequest(config={"cmd": ["true"]})
    first = await worker.deliver(delivery(request, message_id="m-7"))
    again = await worker.deliver(delivery(request, message_id="m-7", redelivered=True))
    assert first.settlement == again.settlement == ACKED
    replies = [r.json() for r in worker.publisher.replies]
    assert replies[0]["exec_id"] == replies[1]["exec_id"]  # derived from the message id
    assert [r["replayed"] for r in replies] == [False, True]
    assert len(worker.execs.registry) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        (b'{"v": 1, "type": "exec.nope"}', "exec.nope"),
        (b"x" * (MAX_BYTES + 1), f"message of {MAX_BYTES + 1} bytes exceeds the limit of 4096"),
    ],
    ids=["malformed", "unknown-type", "oversized"],
)
async def test_an_invalid_message_is_answered_and_dead_lettered(
    worker: Worker, body: bytes, message: str
) -> None:
    d = await worker.deliver(delivery(body, message_id="bad-1"))
    assert d.settlement == ACKED  # the copy went to <ns>.dead; the original is acked
    reply = worker.reply()
    error = reply["error"]
    assert reply["ok"] is False and isinstance(error, dict)
    assert error["code"] == "invalid" and message in error["message"]
    [dead] = worker.publisher.dead_letters
    assert dead.exchange == "t.dead" and dead.body == body and dead.message_id == "bad-1"
    assert dead.headers[REASON_HEADER].startswith("invalid: ")
    assert dead.headers["x-execbus-routing-key"] == "agent.a1"
    assert worker.observed == [("invalid", Disposition.dead_letter(dead.headers[REASON_HEADER]))]
    assert len(worker.execs.registry) == 0


async def test_a_property_that_is_not_utf8_makes_the_message_invalid(worker: Worker) -> None:
    d = await worker.deliver(delivery(create(), user_id="caf\ufffd"))
    assert d.settlement == ACKED
    [dead] = worker.publisher.dead_letters
    assert dead.headers[REASON_HEADER] == ("invalid: the AMQP property user_id is not valid UTF-8")


async def test_a_request_for_another_agent_is_dead_lettered(worker: Worker) -> None:
    request = CreateRequest(agent="a2", exec_id="e1", config={"cmd": ["true"]})
    await worker.deliver(delivery(request))
    [dead] = worker.publisher.dead_letters
    assert dead.headers[REASON_HEADER] == (
        "invalid: request for agent 'a2' arrived on the queue of agent 'a1'"
    )
    assert len(worker.execs.registry) == 0


async def test_a_foreign_reply_to_gets_no_reply_and_the_request_does_not_run(
    worker: Worker,
) -> None:
    d = await worker.deliver(delivery(create(), reply_to="someone-elses-queue"))
    assert d.settlement == ACKED
    assert worker.publisher.replies == []  # never to a queue the caller does not own
    [dead] = worker.publisher.dead_letters
    assert (
        "reply_to 'someone-elses-queue' is not one of the caller's own queues"
        in (dead.headers[REASON_HEADER])
    )
    assert len(worker.execs.registry) == 0


async def test_an_unauthorized_caller_is_refused_and_dead_lettered() -> None:
    policy = parse_policy({"rule": [HOST_RULE | {"callers": ["alice"], "agents": ["a1"]}]})
    worker = build_worker(RequestGuard(policy, LIMITS))
    d = await worker.deliver(delivery(create(), user_id="mallory"))
    assert d.settlement == ACKED
    error = worker.reply()["error"]
    assert isinstance(error, dict) and error["code"] == "forbidden"
    assert error["message"] == "caller 'mallory' is not allowed by this worker's policy"
    [dead] = worker.publisher.dead_letters
    assert dead.headers[REASON_HEADER] == f"forbidden: {error['message']}"
    assert len(worker.execs.registry) == 0

    allowed = await worker.deliver(delivery(create("e2"), user_id="alice"))
    assert allowed.settlement == ACKED and worker.execs.registry.get("e2").owner == "alice"


async def test_a_reply_that_is_not_confirmed_requeues_the_request(worker: Worker) -> None:
    worker.publisher.fail("reply")
    d = await worker.deliver(delivery(create()))
    assert d.settlement == REQUEUED
    assert worker.publisher.dead_letters == []
    assert worker.observed[0][1].action is Action.REQUEUE
    assert "reply not confirmed" in worker.observed[0][1].reason


async def test_an_unconfirmed_event_requeues_without_a_reply(worker: Worker) -> None:
    worker.publisher.fail("event", PublishFailed("no publisher confirm within 1 s"))
    d = await worker.deliver(delivery(create()))
    assert d.settlement == REQUEUED
    assert worker.publisher.replies == []


async def test_a_failed_dead_letter_rejects_the_original(worker: Worker) -> None:
    worker.publisher.fail("dead_letter")
    d = await worker.deliver(delivery(b"not json"))
    assert d.settlement == REJECTED  # the queue's own dead-lettering takes it
    assert worker.publisher.replies  # the caller still got its error


async def test_a_channel_that_died_before_the_settle_is_logged(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    d = delivery(create(), delivery_tag=42, settle_error=ConnectionError("channel closed"))
    with caplog.at_level(logging.WARNING, logger="execbus.worker"):
        await worker.consumer.on_message(d)
        await wait_until(lambda: not worker.consumer.inflight)
    assert d.settlements == []  # the broker redelivers it
    assert "could not settle delivery 42: channel closed" in caplog.text


async def test_requests_of_one_exec_apply_in_delivery_order(worker: Worker) -> None:
    inspect = InspectRequest(exec_id="e1")
    deliveries = [delivery(create()), delivery(inspect, correlation_id="c-2")]
    for d in deliveries:  # the second is delivered before the first is handled
        await worker.consumer.on_message(d)
    for d in deliveries:
        assert await d.settled() == ACKED
    by_correlation = {r.correlation_id: r.json() for r in worker.publisher.replies}
    assert by_correlation["c-2"]["ok"] is True, "the inspect found the exec created before it"


async def test_an_exec_waiting_in_its_lane_does_not_hold_up_other_execs() -> None:
    gate = asyncio.Event()
    policy = parse_policy({"rule": [HOST_RULE | {"callers": ["*"], "agents": ["*"]}]})
    guard = RequestGuard(policy, LIMITS)

    worker = build_worker(guard)
    authorize = worker.consumer.authorize
    assert authorize is not None

    async def slow_for_e1(request: Request, ctx: RequestContext) -> RequestContext:
        if getattr(request, "exec_id", None) == "e1":
            await gate.wait()
        return await authorize(request, ctx)

    worker.consumer.authorize = slow_for_e1
    blocked = delivery(create("e1"), user_id="u")
    free = delivery(create("e2"), user_id="u", correlation_id="c-2")
    await worker.consumer.on_message(blocked)
    await worker.consumer.on_message(free)
    assert await free.settled() == ACKED
    assert blocked.settlement is None
    gate.set()
    assert await blocked.settled() == ACKED
    assert [json.loads(r.body)["exec_id"] for r in worker.publisher.replies] == ["e2", "e1"]
