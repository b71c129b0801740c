"""Health and metrics endpoints of a real agent and a real worker, scraped while execs run."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import uuid
from typing import Any

import pytest

from execbus.testing.agent_peer import AgentPeer, announce, raw_frame
from execbus.testing.processes import free_port
from tests.system.integration.bus import Bus
from tests.system.ops.scrape import Samples, get, names, probe, scrape, value

pytestmark = pytest.mark.integration

AGENT_FAMILIES = {
    "execbus_agent_info",
    "execbus_agent_execs_started_total",
    "execbus_agent_execs_finished_total",
    "execbus_agent_execs_running",
    "execbus_agent_connections",
    "execbus_agent_connections_accepted_total",
    "execbus_agent_frames_rejected_total",
    "execbus_agent_output_captured_bytes_total",
    "execbus_agent_output_dropped_bytes_total",
    "execbus_agent_uptime_seconds",
    "execbus_agent_start_time_seconds",
}
WORKER_FAMILIES = {
    "execbus_requests_total",
    "execbus_request_seconds_count",
    "execbus_execs_finished_total",
    "execbus_dead_lettered_total",
    "execbus_agent_retries_total",
    "execbus_broker_reconnects_total",
    "execbus_agent_reconnects_total",
    "execbus_registry_records",
    "execbus_inflight_requests",
    "execbus_agents_owned",
}


def run_body(cmd: list[str], **config: Any) -> dict[str, Any]:
    return {"type": "exec.run", "exec_id": uuid.uuid4().hex, "config": {"cmd": cmd, **config}}


async def scrape_async(port: int) -> Samples:
    return await asyncio.to_thread(scrape, port)


async def eventually(port: int, check: Any, what: str, timeout: float = 15.0) -> Samples:
    """Scrape ``port`` until ``check(samples)`` holds; the last scrape."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        samples = await scrape_async(port)
        if check(samples):
            return samples
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last scrape: {samples}")
        await asyncio.sleep(0.05)


@pytest.fixture
def agent_and_worker(start_agent: Any, start_worker: Any) -> tuple[Any, int, Any]:
    http_port = free_port()
    agent = start_agent("m1", "--http-port", str(http_port), "--grace", "0")
    worker = start_worker("--agent", f"m1={agent.address}")
    worker.wait_owner("m1")
    return agent, http_port, worker


async def test_agent_health_endpoints(agent_and_worker: tuple[Any, int, Any]) -> None:
    _, port, _ = agent_and_worker
    status, doc = await asyncio.to_thread(probe, port, "/healthz")
    assert status == 200 and doc == {"status": "alive"}
    status, doc = await asyncio.to_thread(probe, port, "/readyz")
    assert status == 200, doc
    assert doc["ready"] is True and doc["shutting_down"] is False
    assert doc["listeners"]["serving"] is True and doc["connections"] >= 1, doc
    status, _, _ = await asyncio.to_thread(get, port, "/nothing")
    assert status == 404
    status, _, _ = await asyncio.to_thread(get, port, "/metrics", "POST")
    assert status == 405
    # A request line above the stream limit is dropped; the endpoint keeps serving.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    status, _ = await asyncio.to_thread(probe, port, "/healthz")
    assert status == 200


async def test_agent_and_worker_counters_move(
    amqp_url: str, namespace: str, agent_and_worker: tuple[Any, int, Any]
) -> None:
    _, aport, worker = agent_and_worker
    wport = worker.http_port
    a0, w0 = await scrape_async(aport), await scrape_async(wport)
    assert names(a0) >= AGENT_FAMILIES, AGENT_FAMILIES - names(a0)
    assert value(w0, "execbus_agents_owned") == 1
    assert value(w0, "execbus_broker_reconnects_total") >= 1
    assert value(w0, "execbus_agent_reconnects_total", agent="m1") == 1
    assert value(a0, "execbus_agent_connections") >= 1

    async with Bus(amqp_url, namespace) as bus:
        # A running exec shows on the agent's gauge while it runs.
        sleeper = run_body(["sleep", "30"], detach=True)
        assert (await bus.call("m1", sleeper))["ok"]
        await eventually(
            aport, lambda s: value(s, "execbus_agent_execs_running") >= 1, "a running exec"
        )
        results = {
            "ok": run_body(["sh", "-c", "printf hello"]),
            "nonzero": run_body(["sh", "-c", "printf oops >&2; exit 3"]),
            "signalled": run_body(["sh", "-c", "kill -KILL $$"]),
            "timed_out": run_body(["sleep", "30"], timeout=0.3),
            "failed": run_body(["/no/such/binary"]),
        }
        replies = await asyncio.gather(*(bus.call("m1", body) for body in results.values()))
        assert [r["ok"] for r in replies] == [True, True, True, True, False], replies
        dropped = run_body(["sh", "-c", "printf 0123456789"], output_limit=4)
        assert (await bus.call("m1", dropped))["ok"]
        corr = await bus.publish("agent.m1", b"{not json")
        assert (await bus.reply(corr))["error"]["code"] == "invalid"
        killed = await bus.call(
            "m1", {"type": "exec.signal", "exec_id": sleeper["exec_id"], "signal": "KILL"}
        )
        assert killed["ok"], killed
        await bus.wait_event(sleeper["exec_id"], "exited")

    a1 = await eventually(
        aport, lambda s: value(s, "execbus_agent_execs_running") == 0, "no running exec"
    )
    delta = {
        r: value(a1, "execbus_agent_execs_finished_total", result=r)
        - value(a0, "execbus_agent_execs_finished_total", result=r)
        for r in ("ok", "nonzero", "signalled", "timed_out", "failed")
    }
    # ok: printf hello and the 10-byte printf; signalled: kill -KILL $$ and the sleeper.
    assert delta == {"ok": 2, "nonzero": 1, "signalled": 2, "timed_out": 1, "failed": 1}
    started = value(a1, "execbus_agent_execs_started_total") - value(
        a0, "execbus_agent_execs_started_total"
    )
    assert started == 7
    captured = "execbus_agent_output_captured_bytes_total"
    assert value(a1, captured, stream="stdout") - value(a0, captured, stream="stdout") == 5 + 4
    assert value(a1, captured, stream="stderr") - value(a0, captured, stream="stderr") == 4
    dropped_name = "execbus_agent_output_dropped_bytes_total"
    assert value(a1, dropped_name, stream="stdout") - value(a0, dropped_name, stream="stdout") == 6
    assert value(a1, "execbus_agent_uptime_seconds") > value(a0, "execbus_agent_uptime_seconds")

    w1 = await eventually(
        wport,
        lambda s: value(s, "execbus_registry_records", agent="m1", state="exited") >= 6,
        "the registry gauge after a sweep",
    )
    assert names(w1) >= WORKER_FAMILIES, WORKER_FAMILIES - names(w1)
    finished = "execbus_execs_finished_total"
    for result in ("ok", "nonzero", "signalled", "timed_out"):
        assert value(w1, finished, agent="m1", state="exited", result=result) >= 1, result
    assert value(w1, finished, agent="m1", state="failed", result="command_not_found") == 1
    requests = "execbus_requests_total"
    assert value(w1, requests, type="exec.run") - value(w0, requests, type="exec.run") == 7
    assert value(w1, requests, type="exec.signal") == 1
    assert value(w1, "execbus_request_seconds_count", type="exec.run") >= 7
    assert value(w1, "execbus_dead_lettered_total", reason="invalid") == 1
    assert value(w1, "execbus_registry_records", agent="m1", state="failed") == 1
    assert value(w1, "execbus_inflight_requests") == 0
    assert value(w1, "execbus_agents_owned") == 1


async def test_worker_inflight_gauge_moves(
    amqp_url: str, namespace: str, agent_and_worker: tuple[Any, int, Any]
) -> None:
    """A request the agent does not answer yet (the agent is stopped) is in flight."""
    agent, _, worker = agent_and_worker
    wport = worker.http_port
    assert value(await scrape_async(wport), "execbus_inflight_requests") == 0
    async with Bus(amqp_url, namespace) as bus:
        os.kill(agent.proc.pid, signal.SIGSTOP)
        try:
            corr = await bus.publish("agent.m1", {"v": 1, **run_body(["true"])})
            await eventually(
                wport,
                lambda s: value(s, "execbus_inflight_requests") == 1,
                "the request in flight",
                timeout=5,
            )
        finally:
            os.kill(agent.proc.pid, signal.SIGCONT)
        reply = await bus.reply(corr, timeout=20)
        assert reply["ok"], reply
    await eventually(
        wport, lambda s: value(s, "execbus_inflight_requests") == 0, "the request settled"
    )


async def test_worker_counts_agent_link_changes_and_reconnects(
    amqp_url: str, namespace: str, start_agent: Any, agent_and_worker: tuple[Any, int, Any]
) -> None:
    agent, _, worker = agent_and_worker
    wport = worker.http_port
    w0 = await scrape_async(wport)
    assert value(w0, "execbus_agent_connected", agent="m1") == 1.0
    agent.kill()
    await eventually(
        wport,
        lambda s: (
            value(s, "execbus_agent_link_down_total", agent="m1")
            > value(w0, "execbus_agent_link_down_total", agent="m1")
            and value(s, "execbus_agent_connected", agent="m1") == 0.0
        ),
        "the link counted down",
    )
    async with Bus(amqp_url, namespace) as bus:
        # Published while the link is down: the start waits for it to come back.
        corr = await bus.publish("agent.m1", {"v": 1, **run_body(["true"])})
        http_port = free_port()
        start_agent("m1", "--http-port", str(http_port), socket_path=agent.socket_path)
        reply = await bus.reply(corr, timeout=20)
        assert reply["ok"], reply
    w1 = await eventually(
        wport,
        lambda s: value(s, "execbus_agent_reconnects_total", agent="m1") >= 2,
        "the agent reconnect counted",
    )
    assert value(w1, "execbus_agent_reconnects_total", agent="m1") == 2
    a1 = await scrape_async(http_port)
    assert value(a1, "execbus_agent_execs_finished_total", result="ok") == 1
    assert value(a1, "execbus_agent_connections_accepted_total") >= 1


def _send_raw(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


async def test_agent_counts_rejected_frames(start_agent: Any) -> None:
    port = free_port()
    agent = start_agent("frames", "--http-port", str(port))
    before = await scrape_async(port)
    sock = str(agent.socket_path)
    # A well-delimited frame with a header that is not JSON, then end of stream.
    await asyncio.to_thread(_send_raw, sock, raw_frame(b"{nope"))
    # A frame announced larger than --max-frame (16 MiB by default): fatal.
    await asyncio.to_thread(_send_raw, sock, announce(64 * 1024 * 1024))
    after = await eventually(
        port,
        lambda s: (
            value(s, "execbus_agent_connections_accepted_total")
            - value(before, "execbus_agent_connections_accepted_total")
            == 2
            and value(s, "execbus_agent_connections") == 0
        ),
        "both connections served and closed",
    )
    rejected = "execbus_agent_frames_rejected_total"
    assert value(after, rejected, reason="bad") - value(before, rejected, reason="bad") == 1
    assert value(after, rejected, reason="oversized") == 1
    info = [k for k in after if k[0] == "execbus_agent_info"]
    assert info and dict(info[0][1])["boot_id"], info


async def test_agent_readyz_fails_while_shutting_down(start_agent: Any) -> None:
    """SIGTERM: /readyz turns 503 while running execs get their grace period."""
    port = free_port()
    agent = start_agent("drain", "--http-port", str(port), "--grace", "30")
    peer = await AgentPeer.unix(str(agent.socket_path))
    assert (await peer.call("start", exec_id="drain1", cmd=["sleep", "30"]))["new"]
    status, doc = await asyncio.to_thread(probe, port, "/readyz")
    assert status == 200 and doc["execs_running"] == 1, doc
    agent.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        while True:
            status, doc = await asyncio.to_thread(probe, port, "/readyz")
            if status == 503:
                break
            await asyncio.sleep(0.05)
    assert doc["ready"] is False and doc["shutting_down"] is True, doc
    assert doc["listeners"]["serving"] is False
    status, doc = await asyncio.to_thread(probe, port, "/healthz")
    assert status == 200, "alive while draining"
    agent.kill()
    await peer.close()
