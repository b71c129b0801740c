"""The worker against the real broker and real agent processes, over the raw wire contract."""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from execbus.testing.waiting import wait_until
from tests.system.integration.bus import Bus, b64, unb64

pytestmark = pytest.mark.integration


def in_flight(http_port: int) -> float:
    """The requests the worker is handling right now (its /metrics)."""
    url = f"http://127.0.0.1:{http_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("execbus_inflight_requests ")
    )


def run_body(cmd: list[str], **config: Any) -> dict[str, Any]:
    return {"type": "exec.run", "exec_id": uuid.uuid4().hex, "config": {"cmd": cmd, **config}}


@pytest.fixture
def agent_worker(start_agent: Any, start_worker: Any) -> tuple[Any, Any]:
    agent = start_agent("a1")
    worker = start_worker("--agent", f"a1={agent.address}")
    worker.wait_owner("a1")
    return agent, worker


async def test_run_replies_and_publishes_exit(
    amqp_url: str, namespace: str, agent_worker: Any
) -> None:
    async with Bus(amqp_url, namespace) as bus:
        body = run_body(["sh", "-c", "echo out; echo err >&2; exit 3"])
        reply = await bus.call("a1", body)
        assert reply["ok"], reply
        exit_info = reply["result"]["exit"]
        assert exit_info["exit_code"] == 3
        assert unb64(exit_info["stdout"]) == b"out\n"
        assert unb64(exit_info["stderr"]) == b"err\n"
        event = await bus.wait_event(body["exec_id"], "exited")
        assert event["exit"]["exit_code"] == 3
        kinds = [e["type"] for e in bus.events_of(body["exec_id"])]
        assert kinds == ["exec.created", "exec.started", "exec.exited"]
        assert bus.event_keys[-1] == "exec.a1.~.exited"
        assert len({e["event_id"] for e in bus.events_of(body["exec_id"])}) == 3
        # The exec id rides in a header too, so consumers can filter before parsing.
        assert bus.event_headers[-1]["x-execbus-exec-id"] == body["exec_id"]


async def test_events_keep_their_order_under_concurrency(
    amqp_url: str, namespace: str, agent_worker: Any
) -> None:
    """Events are published without waiting for each other's confirms; order must hold."""
    async with Bus(amqp_url, namespace) as bus:
        bodies = [run_body(["true"]) for _ in range(40)]
        replies = await asyncio.gather(*(bus.call("a1", body) for body in bodies))
        assert all(r["ok"] and r["result"]["exit"]["exit_code"] == 0 for r in replies)
        for body in bodies:
            await bus.wait_event(body["exec_id"], "exited")
            kinds = [e["type"] for e in bus.events_of(body["exec_id"])]
            assert kinds == ["exec.created", "exec.started", "exec.exited"], kinds


async def test_lifecycle_through_the_bus(amqp_url: str, namespace: str, agent_worker: Any) -> None:
    async with Bus(amqp_url, namespace) as bus:
        exec_id = uuid.uuid4().hex
        config = {
            "cmd": ["sh", "-c", "read line; echo got:$line; stty size"],
            "tty": True,
            "attach_stdin": True,
            "console_size": {"width": 80, "height": 24},
        }
        created = await bus.call(
            "a1", {"type": "exec.create", "exec_id": exec_id, "config": config}
        )
        assert created["ok"] and created["result"]["state"] == "created"
        again = await bus.call("a1", {"type": "exec.create", "exec_id": exec_id, "config": config})
        assert again["ok"] and again["replayed"], "an identical create is idempotent"
        assert created["replayed"] is False
        started = await bus.call("a1", {"type": "exec.start", "exec_id": exec_id, "detach": True})
        assert started["ok"] and started["result"]["state"] == "running"
        assert started["replayed"] is False
        second = await bus.call("a1", {"type": "exec.start", "exec_id": exec_id, "detach": True})
        assert second["ok"] and second["replayed"], "a second start replays, never spawns"
        assert second["result"]["pid"] == started["result"]["pid"]
        resized = await bus.call(
            "a1", {"type": "exec.resize", "exec_id": exec_id, "width": 100, "height": 40}
        )
        assert resized["ok"], resized
        listed = await bus.call("a1", {"type": "exec.list"})
        assert exec_id in [e["exec_id"] for e in listed["result"]["execs"]]
        sent = await bus.call(
            "a1", {"type": "exec.stdin", "exec_id": exec_id, "data": b64(b"hello\n")}
        )
        assert sent["ok"], sent
        wait = {"type": "exec.wait", "exec_id": exec_id, "include_output": True}
        waited = await bus.call("a1", wait)
        out = unb64(waited["result"]["exit"]["stdout"])
        assert b"got:hello" in out and b"40 100" in out
        inspected = await bus.call("a1", {"type": "exec.inspect", "exec_id": exec_id})
        assert inspected["result"]["state"] == "exited"
        removed = await bus.call("a1", {"type": "exec.remove", "exec_id": exec_id})
        assert removed["ok"]
        gone = await bus.call("a1", {"type": "exec.inspect", "exec_id": exec_id})
        assert gone["error"]["code"] == "not_found"


async def test_signal_and_conflicts(amqp_url: str, namespace: str, agent_worker: Any) -> None:
    async with Bus(amqp_url, namespace) as bus:
        body = run_body(["sleep", "100"], detach=True)
        started = await bus.call("a1", body)
        assert started["result"]["state"] == "running"
        exec_id = body["exec_id"]
        resize = await bus.call(
            "a1", {"type": "exec.resize", "exec_id": exec_id, "width": 10, "height": 10}
        )
        assert resize["error"]["code"] == "conflict" and "TTY" in resize["error"]["message"]
        busy = await bus.call("a1", {"type": "exec.remove", "exec_id": exec_id})
        assert busy["error"]["code"] == "conflict"
        killed = await bus.call(
            "a1", {"type": "exec.signal", "exec_id": exec_id, "signal": "SIGTERM"}
        )
        assert killed["ok"]
        event = await bus.wait_event(exec_id, "exited")
        assert event["exit"]["exit_code"] == 143 and event["exit"]["signal"] == "SIGTERM"
        late = await bus.call("a1", {"type": "exec.signal", "exec_id": exec_id})
        assert late["error"]["code"] == "conflict"
        missing = await bus.call("a1", {"type": "exec.inspect", "exec_id": "nope"})
        assert missing["error"]["code"] == "not_found"


async def test_start_failures_are_reported(
    amqp_url: str, namespace: str, agent_worker: Any
) -> None:
    async with Bus(amqp_url, namespace) as bus:
        body = run_body(["/no/such/binary"])
        reply = await bus.call("a1", body)
        assert reply["error"]["code"] == "command_not_found"
        assert reply["error"]["exit_code"] == 127
        event = await bus.wait_event(body["exec_id"], "failed")
        assert event["error"]["code"] == "command_not_found"
        state = await bus.call("a1", {"type": "exec.inspect", "exec_id": body["exec_id"]})
        assert state["result"]["state"] == "failed", "a failed start is never left running"


async def test_redelivered_run_never_runs_twice(
    amqp_url: str, namespace: str, agent_worker: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    async with Bus(amqp_url, namespace) as bus:
        body = {"v": 1, "type": "exec.run", "config": {"cmd": ["sh", "-c", f"echo x >> {marker}"]}}
        first = await bus.publish("agent.a1", body, message_id="same-message")
        second = await bus.publish("agent.a1", body, message_id="same-message")
        one, two = await bus.reply(first), await bus.reply(second)
        assert one["ok"] and two["ok"]
        assert one["exec_id"] == two["exec_id"]
    assert marker.read_text() == "x\n"


async def test_bad_messages_are_dead_lettered(
    amqp_url: str, namespace: str, agent_worker: Any
) -> None:
    async with Bus(amqp_url, namespace) as bus:
        bad = [
            b"{not json",
            b'{"v": 1, "type": "exec.explode"}',
            b'{"v": 1, "type": "exec.run", "config": {"cmd": []}}',
            b'{"v": 1, "type": "exec.run", "config": {"cmd": ["true"], "env": ["NOEQUALS"]}}',
            b"[" * 100_000,
            b'{"v": 1, "type": "exec.run", "config": {"cmd": ["'
            + b"x" * (5 * 1024 * 1024)
            + b'"]}}',
        ]
        corrs = [await bus.publish("agent.a1", body) for body in bad]
        replies = [await bus.reply(c) for c in corrs]
        assert all(r["ok"] is False and r["error"]["code"] == "invalid" for r in replies), replies
        assert "exceeds the limit" in replies[-1]["error"]["message"]
        dead = await bus.dead_letters(len(bad))
        reasons = [str((m.headers or {}).get("x-execbus-reason")) for m in dead]
        assert all(r.startswith("invalid:") for r in reasons), reasons
        ok = await bus.call("a1", run_body(["true"]))
        assert ok["ok"], "the worker keeps serving after bad input"


async def test_unknown_agent_is_dead_lettered(
    amqp_url: str, namespace: str, agent_worker: Any
) -> None:
    async with Bus(amqp_url, namespace) as bus:
        reply = await bus.call("ghost", run_body(["true"]) | {"agent": "ghost"})
        assert reply["error"]["code"] == "unknown_agent"
        assert "ghost" in reply["error"]["message"]
        [dead] = await bus.dead_letters(1)
        assert "unknown_agent" in str((dead.headers or {})["x-execbus-reason"])


async def test_agent_down_then_back_runs_once(
    amqp_url: str, namespace: str, start_agent: Any, start_worker: Any, tmp_path: Path
) -> None:
    agent = start_agent("a1")
    worker = start_worker("--agent", f"a1={agent.address}")
    worker.wait_owner("a1")
    agent.kill()
    marker = tmp_path / "ran"
    async with Bus(amqp_url, namespace) as bus:
        body = run_body(["sh", "-c", f"echo x >> {marker}"])
        corr = await bus.publish("agent.a1", {"v": 1, **body})
        await wait_until(  # the request meets the agent down: the worker is on it
            lambda: in_flight(worker.http_port) > 0, what="the request in the worker's hands"
        )
        start_agent("a1", socket_path=agent.socket_path)
        reply = await bus.reply(corr, timeout=20)
        assert reply["ok"], reply
        assert reply["result"]["exit"]["exit_code"] == 0
    assert marker.read_text() == "x\n"


async def test_agent_that_stays_down_fails_the_exec(
    amqp_url: str, namespace: str, start_worker: Any, tmp_path: Path
) -> None:
    worker = start_worker(
        "--agent",
        f"a1=unix://{tmp_path}/nobody.sock",
        env={"EXECBUS_AGENT_RETRY_MAX_ELAPSED": "1.5", "EXECBUS_AGENT_CALL_TIMEOUT": "0.5"},
    )
    worker.wait_ready()
    async with Bus(amqp_url, namespace) as bus:
        body = run_body(["true"])
        reply = await bus.call("a1", body, timeout=20)
        assert reply["error"]["code"] == "agent_unavailable"
        event = await bus.wait_event(body["exec_id"], "failed")
        assert event["error"]["code"] == "agent_unavailable"


async def test_standby_worker_takes_over_and_publishes_pending_exit(
    amqp_url: str, namespace: str, start_agent: Any, start_worker: Any
) -> None:
    agent = start_agent("a1")
    first = start_worker("--agent", f"a1={agent.address}")
    first.wait_owner("a1")
    second = start_worker("--agent", f"a1={agent.address}")
    async with Bus(amqp_url, namespace) as bus:
        status = second.readyz()
        assert status is not None and status["agents"]["a1"]["owner"] is False  # type: ignore[index]
        body = run_body(["sh", "-c", "sleep 1.5; echo late"])
        corr = await bus.publish("agent.a1", {"v": 1, **body})
        await bus.wait_event(body["exec_id"], "started")
        first.terminate(timeout=30)
        second.wait_owner("a1")
        event = await bus.wait_event(body["exec_id"], "exited", timeout=20)
        assert unb64(event["exit"]["stdout"]) == b"late\n"
        reply = await bus.reply(corr, timeout=20)
        assert reply["ok"] and reply["exec_id"] == body["exec_id"]
        follow = await bus.call("a1", run_body(["true"]))
        assert follow["ok"], "the new owner serves requests"


async def test_quick_start_with_embedded_local_agent(
    amqp_url: str, namespace: str, start_worker: Any
) -> None:
    worker = start_worker()
    worker.wait_owner("local")
    async with Bus(amqp_url, namespace) as bus:
        reply = await bus.call("local", run_body(["echo", "hello"]))
        assert unb64(reply["result"]["exit"]["stdout"]) == b"hello\n"


async def test_output_is_streamed_in_order(
    amqp_url: str, namespace: str, agent_worker: Any
) -> None:
    async with Bus(amqp_url, namespace) as bus:
        script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; sleep 0.02; done"
        body = run_body(["sh", "-c", script], stream_output=True, output_limit=4)
        reply = await bus.call("a1", body)
        exit_info = reply["result"]["exit"]
        assert unb64(exit_info["stdout"]) == b"out1" and exit_info["stdout_dropped"] == 21
        await bus.wait_event(body["exec_id"], "exited")
        chunks = [e for e in bus.events_of(body["exec_id"]) if e["type"] == "exec.output"]
        by_stream: dict[str, list[Any]] = {"stdout": [], "stderr": []}
        for chunk in chunks:
            by_stream[chunk["stream"]].append(chunk)
        for stream, items in by_stream.items():
            assert [c["seq"] for c in items] == list(range(len(items))), stream
        assert b"".join(unb64(c["data"]) for c in by_stream["stdout"]) == b"".join(
            f"out{i}\n".encode() for i in range(1, 6)
        )
        assert b"".join(unb64(c["data"]) for c in by_stream["stderr"]) == b"".join(
            f"err{i}\n".encode() for i in range(1, 6)
        )
        kinds = [e["type"] for e in bus.events_of(body["exec_id"])]
        assert kinds.index("exec.exited") == len(kinds) - 1, "output events come before the exit"


async def test_metrics_and_health_move(amqp_url: str, namespace: str, agent_worker: Any) -> None:
    import urllib.request

    _, worker = agent_worker
    async with Bus(amqp_url, namespace) as bus:
        assert (await bus.call("a1", run_body(["true"])))["ok"]
        corr = await bus.publish("agent.a1", b"garbage")
        await bus.reply(corr)
    url = f"http://127.0.0.1:{worker.http_port}/metrics"
    dead_lettered = 'execbus_dead_lettered_total{reason="invalid"} 1.0'
    for _ in range(50):  # the reply goes out just before the delivery is settled and counted
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode()
        )
        if dead_lettered in text:
            break
        await asyncio.sleep(0.1)
    assert 'execbus_requests_total{outcome="ack",type="exec.run"} 1.0' in text
    assert dead_lettered in text
    assert 'execbus_execs_finished_total{agent="a1",result="ok",state="exited"} 1.0' in text
    assert 'execbus_worker_info{event_loop="uvloop",version="' in text  # uvloop: a dependency
    assert "execbus_request_seconds_bucket" in text
    status = worker.readyz()
    assert status["ready"] is True and status["agents"]["a1"]["connected"] is True
