"""Graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from agent_harness import AgentFactory, wait_group_gone


async def test_sigterm_gives_execs_the_grace_then_kills_and_reports(
    agent_factory: AgentFactory,
) -> None:
    agent = agent_factory("--grace", "0.5")
    c = await agent.connect()
    try:
        await c.call("watch")
        long = await c.call("start", exec_id="long", cmd=["sh", "-c", "sleep 100 & sleep 100"])
        await c.call("start", exec_id="short", cmd=["sh", "-c", "sleep 0.2; echo done"])
        t0 = time.monotonic()
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGTERM)
        exits = {}
        while len(exits) < 2:
            frame = await c.next_event()
            exits[frame.header["exec_id"]] = frame.header["exit"]
        assert exits["short"]["exit_code"] == 0
        assert (exits["long"]["exit_code"], exits["long"]["signal"]) == (137, "SIGKILL")
        assert 0.5 <= time.monotonic() - t0 < 5
        await c.wait_closed()
        assert await asyncio.to_thread(agent.proc.wait, 10) == 0
        assert not await asyncio.to_thread(os.path.exists, agent.socket)
        wait_group_gone(long["pid"])
    finally:
        await c.close()
