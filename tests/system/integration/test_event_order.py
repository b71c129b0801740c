"""Per-exec event order on ``<ns>.events``, read from one queue as any consumer would.

For every exec: created < started < output (by seq, per stream) < exited or
failed, whatever the concurrency, with and without ``stream_output``, on the
agent's host and in a runc container, and across a takeover (the new owner
publishes the exits of the execs it inherited).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pwd
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from execbus.testing import runc
from tests.system.integration.bus import Bus

pytestmark = pytest.mark.integration

RANK = {"exec.created": 0, "exec.started": 1, "exec.output": 2, "exec.exited": 3, "exec.failed": 3}


class EventLog:
    """Every event of one agent, in arrival order, from one exclusive queue."""

    def __init__(self) -> None:
        self.by_exec: dict[str, list[dict[str, Any]]] = defaultdict(list)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        event = json.loads(message.body)
        self.by_exec[event["exec_id"]].append(event)

    def finished(self, exec_ids: list[str]) -> bool:
        return all(
            any(RANK[e["type"]] == 3 for e in self.by_exec.get(exec_id, [])) for exec_id in exec_ids
        )


@pytest.fixture
async def event_log(amqp_url: str, namespace: str) -> AsyncIterator[tuple[EventLog, Any]]:
    log = EventLog()
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)

        async def bind(agent: str) -> None:
            await queue.bind(f"{namespace}.events", f"exec.{agent}.#")

        await queue.consume(log.on_message, no_ack=True)
        yield log, bind


def order_problems(events: list[dict[str, Any]]) -> list[str]:
    """What is wrong with one exec's events (duplicates by event_id dropped)."""
    seen: set[str] = set()
    unique = [e for e in events if not (e["event_id"] in seen or seen.add(e["event_id"]))]
    problems, last = [], -1
    seqs: dict[str, int] = {}
    for event in unique:
        rank = RANK[event["type"]]
        if rank < last:
            problems.append(f"{event['type']} after a later kind")
        last = max(last, rank)
        if event["type"] == "exec.output":
            stream, seq = event["stream"], event["seq"]
            if seq <= seqs.get(stream, -1):
                problems.append(f"{stream} seq {seq} after {seqs[stream]}")
            seqs[stream] = seq
    kinds = [e["type"] for e in unique]
    if sum(RANK[k] == 3 for k in kinds) != 1 or RANK[kinds[-1]] != 3:
        problems.append(f"not exactly one final event, last: {kinds}")
    return problems


def streaming_run(script: str, **config: Any) -> dict[str, Any]:
    cmd = ["sh", "-c", script]
    config = {"cmd": cmd, "stream_output": True, "timeout": 60, **config}
    return {"v": 1, "type": "exec.run", "exec_id": uuid.uuid4().hex, "config": config}


async def run_all(bus: Bus, agent: str, bodies: list[dict[str, Any]]) -> None:
    corrs = [await bus.publish(f"agent.{agent}", body) for body in bodies]
    replies = await asyncio.gather(*(bus.reply(c, timeout=60) for c in corrs))
    assert all(r["ok"] for r in replies), [r for r in replies if not r["ok"]][:3]


async def settled(log: EventLog, exec_ids: list[str], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not log.finished(exec_ids):
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # anything that would arrive out of order arrives now


SCRIPT = "echo one; echo err-one >&2; echo two; echo err-two >&2"


@pytest.mark.parametrize("stream_output", [True, False])
async def test_fifty_concurrent_execs_keep_their_order(
    amqp_url: str,
    namespace: str,
    start_agent: Any,
    start_worker: Any,
    event_log: tuple[EventLog, Any],
    stream_output: bool,
) -> None:
    log, bind = event_log
    agent = start_agent("o1")
    start_worker("--agent", f"o1={agent.address}").wait_owner("o1")
    await bind("o1")
    async with Bus(amqp_url, namespace) as bus:
        for _ in range(3):
            bodies = [streaming_run(SCRIPT, stream_output=stream_output) for _ in range(50)]
            await run_all(bus, "o1", bodies)
            ids = [b["exec_id"] for b in bodies]
            await settled(log, ids)
            problems = {i: p for i in ids if (p := order_problems(log.by_exec[i]))}
            assert not problems, problems
            if stream_output:
                outputs = sum(e["type"] == "exec.output" for i in ids for e in log.by_exec[i])
                assert outputs >= 100, "the execs streamed"


async def test_container_execs_keep_their_order(
    amqp_url: str,
    namespace: str,
    start_agent: Any,
    start_worker: Any,
    event_log: tuple[EventLog, Any],
    tmp_path: Path,
) -> None:
    if (reason := runc.unavailable()) is not None:
        pytest.skip(reason)
    container = runc.BusyboxContainer(tmp_path).create()
    try:
        log, bind = event_log
        agent = start_agent("c1", "--runc-root", str(container.root))
        start_worker("--agent", f"c1={agent.address}").wait_owner("c1")
        await bind("c1")
        async with Bus(amqp_url, namespace) as bus:
            for _ in range(2):
                bodies = [streaming_run(SCRIPT, container_id=container.id) for _ in range(50)]
                await run_all(bus, "c1", bodies)
                ids = [b["exec_id"] for b in bodies]
                await settled(log, ids)
                problems = {i: p for i in ids if (p := order_problems(log.by_exec[i]))}
                assert not problems, problems
    finally:
        container.delete()


async def test_order_holds_across_a_takeover(
    amqp_url: str,
    namespace: str,
    start_agent: Any,
    start_worker: Any,
    event_log: tuple[EventLog, Any],
) -> None:
    log, bind = event_log
    agent = start_agent("t1")
    first = start_worker("--agent", f"t1={agent.address}")
    first.wait_owner("t1")
    standby = start_worker("--agent", f"t1={agent.address}")
    await bind("t1")
    script = "for i in 1 2 3 4 5 6 7 8; do echo out$i; echo err$i >&2; sleep 0.1; done"
    async with Bus(amqp_url, namespace) as bus:
        bodies = [streaming_run(script) for _ in range(20)]
        for body in bodies:
            await bus.publish("agent.t1", body)
        ids = [b["exec_id"] for b in bodies]
        async with asyncio.timeout(20):
            while not all(
                any(e["type"] == "exec.output" for e in log.by_exec.get(i, [])) for i in ids
            ):
                await asyncio.sleep(0.02)
        first.kill()  # mid-stream
        standby.wait_owner("t1")
        await settled(log, ids, timeout=40)
    problems = {i: p for i in ids if (p := order_problems(log.by_exec[i]))}
    assert not problems, problems


@pytest.mark.parametrize(
    ("worker_setting", "requested", "expected"),
    [
        (None, None, ["exec.created", "exec.started", "exec.exited"]),
        (None, [], ["exec.exited"]),
        (None, ["started"], ["exec.started", "exec.exited"]),
        ("none", None, ["exec.exited"]),
        ("started", ["created", "started"], ["exec.started", "exec.exited"]),
    ],
)
async def test_lifecycle_events_are_selectable_the_exit_always_goes_out(
    amqp_url: str,
    namespace: str,
    start_agent: Any,
    start_worker: Any,
    event_log: tuple[EventLog, Any],
    worker_setting: str | None,
    requested: list[str] | None,
    expected: list[str],
) -> None:
    log, bind = event_log
    agent = start_agent("l1")
    env = {"EXECBUS_LIFECYCLE_EVENTS": worker_setting} if worker_setting is not None else {}
    start_worker("--agent", f"l1={agent.address}", env=env).wait_owner("l1")
    await bind("l1")
    extra = {"lifecycle_events": requested} if requested is not None else {}
    async with Bus(amqp_url, namespace) as bus:
        bodies = [streaming_run("echo hi", stream_output=False, **extra) for _ in range(5)]
        bodies.append(streaming_run(SCRIPT, **extra))  # streamed: output still in order
        await run_all(bus, "l1", bodies)
        ids = [b["exec_id"] for b in bodies]
        await settled(log, ids)
    for exec_id in ids[:-1]:
        assert [e["type"] for e in log.by_exec[exec_id]] == expected
    streamed = [e["type"] for e in log.by_exec[ids[-1]] if e["type"] != "exec.output"]
    assert streamed == expected
    assert not order_problems(log.by_exec[ids[-1]])


async def test_created_carries_the_user_and_never_env_values(
    amqp_url: str,
    namespace: str,
    start_agent: Any,
    start_worker: Any,
    event_log: tuple[EventLog, Any],
) -> None:
    """``exec.created`` says whom the command runs as (``config.user``), and nothing when
    it runs as the agent's default user; no event of those execs holds an env value.
    With ``exec.created`` off, no event carries the user."""
    log, bind = event_log
    agent = start_agent("u1")
    start_worker("--agent", f"u1={agent.address}").wait_owner("u1")
    await bind("u1")
    if os.geteuid() == 0:
        user, uid = "nobody", pwd.getpwnam("nobody").pw_uid
    else:  # an unprivileged agent may only name itself
        user, uid = f"{os.getuid()}:{os.getgid()}", os.getuid()
    secret = "s3cret-" + uuid.uuid4().hex
    env = [f"TOKEN={secret}"]
    as_user = streaming_run("id -u", stream_output=False, user=user, env=env)
    default = streaming_run("id -u", stream_output=False, env=env)
    no_created = streaming_run("id -u", stream_output=False, user=user, lifecycle_events=[])
    async with Bus(amqp_url, namespace) as bus:
        await run_all(bus, "u1", [as_user, default, no_created])
        ids = [b["exec_id"] for b in (as_user, default, no_created)]
        await settled(log, ids)

    def event(exec_id: str, kind: str) -> dict[str, Any]:
        (found,) = [e for e in log.by_exec[exec_id] if e["type"] == f"exec.{kind}"]
        return found

    created = event(as_user["exec_id"], "created")
    assert created["user"] == user
    assert created["env_keys"] == ["TOKEN"]
    ran_as = base64.b64decode(event(as_user["exec_id"], "exited")["exit"]["stdout"])
    assert ran_as.decode().strip() == str(uid)
    assert "user" not in event(default["exec_id"], "created")
    assert [e["type"] for e in log.by_exec[no_created["exec_id"]]] == ["exec.exited"]
    assert all("user" not in e for e in log.by_exec[no_created["exec_id"]])
    everything = json.dumps([log.by_exec[i] for i in ids])
    assert secret not in everything
