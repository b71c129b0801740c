"""Graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from tests.system.agent.harness import AgentFactory, wait_group_gone


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


async def test_a_second_sigterm_exits_at_once_and_the_lifeline_takes_the_execs(
    agent_factory: AgentFactory,
) -> None:
    agent = agent_factory("--grace", "60")
    c = await agent.connect()
    try:
        started = await c.call("start", exec_id="long", cmd=["sleep", "100"])
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not any(e.get("msg") == "shutting down" for e in agent.log_lines()):
            assert time.monotonic() < deadline, agent.log_text()
            await asyncio.sleep(0.02)
        t0 = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(agent.proc.wait, 10) == 1
        assert time.monotonic() - t0 < 5, "the second signal did not cut the grace short"
        assert any(e.get("msg") == "second SIGTERM: exiting now" for e in agent.log_lines())
        wait_group_gone(started["pid"])
    finally:
        await c.close()
