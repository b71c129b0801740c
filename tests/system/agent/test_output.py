"""Output capture under floods, streaming events and backpressure."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

from execbus.testing.agent_peer import AgentPeer, split_captures
from tests.system.agent.harness import AgentFactory, rss_kib

MiB = 1024 * 1024
RSS_LIMIT_KIB = 64 * 1024


async def _wait_sampling_rss(c: AgentPeer, exec_id: str, pid: int) -> tuple[dict, bytes, int]:
    """Wait for the exec while sampling the agent's RSS; (state, payload, peak KiB)."""
    waiting = asyncio.ensure_future(c.request("wait", exec_id=exec_id))
    peak = rss_kib(pid)
    while not waiting.done():
        peak = max(peak, rss_kib(pid))
        await asyncio.sleep(0.005)
    frame = await waiting
    return frame.header["result"], frame.payload, peak


async def test_flood_keeps_memory_bounded_and_counts_exactly(agent_factory: AgentFactory) -> None:
    agent = agent_factory()
    c = await agent.connect()
    try:
        exec_id = uuid.uuid4().hex
        # `wait`: the background writer is part of the flood, not a straggler
        # racing the drain window after the shell exits.
        flood = f"head -c {100 * MiB} /dev/zero & head -c {30 * MiB} /dev/zero >&2; wait"
        cmd = ["sh", "-c", flood]
        await c.call("start", exec_id=exec_id, cmd=cmd, output_limit=MiB)
        state, payload, peak = await _wait_sampling_rss(c, exec_id, agent.pid)
        out, err = split_captures(state, payload)
        assert state["exit"]["exit_code"] == 0
        assert (len(out), len(err)) == (MiB, MiB)
        assert out == err == bytes(MiB)
        assert state["exit"]["stdout_dropped"] == 99 * MiB
        assert state["exit"]["stderr_dropped"] == 29 * MiB
        assert peak < RSS_LIMIT_KIB, f"agent RSS peaked at {peak} KiB"
    finally:
        await c.close()


async def test_output_events_arrive_in_order(client: AgentPeer) -> None:
    await client.call("watch")
    exec_id = uuid.uuid4().hex
    script = "for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.01; done"
    await client.call("start", exec_id=exec_id, cmd=["sh", "-c", script], stream_output=True)
    chunks: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
    while True:
        frame = await client.next_event()
        if frame.header.get("exec_id") != exec_id:
            continue
        if frame.header["event"] == "exit":
            break
        chunks[frame.header["stream"]].append((frame.header["seq"], frame.payload))
    out, err = split_captures(frame.header, frame.payload)
    assert (out, err) == (b"out1\nout2\nout3\n", b"err1\nerr2\nerr3\n")
    for stream, captured in (("stdout", out), ("stderr", err)):
        seqs = [seq for seq, _ in chunks[stream]]
        assert seqs == list(range(len(seqs)))
        assert b"".join(data for _, data in chunks[stream]) == captured


async def test_slow_watcher_backpressures_the_process(agent_factory: AgentFactory) -> None:
    agent = agent_factory()
    total = 40 * MiB
    watcher = await agent.connect(limit=64 * 1024)
    other = await agent.connect()
    try:
        await watcher.call("watch")
        exec_id = uuid.uuid4().hex
        await other.call(
            "start",
            exec_id=exec_id,
            cmd=["head", "-c", str(total), "/dev/zero"],
            stream_output=True,
            output_limit=64 * 1024,
        )
        watcher.pause_reading()
        await asyncio.sleep(0.5)
        # The watcher reads nothing: the agent must stop reading the process.
        assert (await other.call("inspect", exec_id=exec_id))["state"] == "running"
        assert rss_kib(agent.pid) < RSS_LIMIT_KIB
        watcher.resume_reading()
        received, seq = 0, 0
        while True:
            frame = await watcher.next_event()
            if frame.header["event"] == "exit":
                break
            assert frame.header["seq"] == seq
            seq += 1
            received += len(frame.payload)
        assert received == total
        assert frame.header["exit"]["stdout_dropped"] == total - 64 * 1024
    finally:
        await watcher.close()
        await other.close()


async def test_streaming_without_watchers_still_captures(client: AgentPeer) -> None:
    state, out, _ = await client.run(["echo", "quiet"], stream_output=True)
    assert out == b"quiet\n"
    assert state["exit"]["exit_code"] == 0
