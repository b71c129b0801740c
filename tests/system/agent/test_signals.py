"""Signals and timeouts reach the whole process group."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

from execbus.testing.agent_peer import AgentPeer, AgentRequestError
from tests.system.agent.harness import wait_group_gone

TREE = ["sh", "-c", "sleep 100 & sleep 100"]


async def test_signal_kills_the_process_tree(client: AgentPeer) -> None:
    exec_id = uuid.uuid4().hex
    started = await client.call("start", exec_id=exec_id, cmd=TREE)
    await client.call("signal", exec_id=exec_id, signal="SIGTERM")
    state = await client.call("wait", exec_id=exec_id)
    assert (state["exit"]["exit_code"], state["exit"]["signal"]) == (143, "SIGTERM")
    assert state["exit"]["timed_out"] is False
    wait_group_gone(started["pid"])


@pytest.mark.parametrize(("name", "code"), [("TERM", 143), (9, 137), ("2", 130), ("sigint", 130)])
async def test_signal_names_and_numbers(client: AgentPeer, name: object, code: int) -> None:
    exec_id = uuid.uuid4().hex
    await client.call("start", exec_id=exec_id, cmd=["sleep", "30"])
    await client.call("signal", exec_id=exec_id, signal=name)
    state = await client.call("wait", exec_id=exec_id)
    assert state["exit"]["exit_code"] == code
    assert state["exit"]["signal"] == signal.Signals(code - 128).name


async def test_bad_signals_and_finished_execs(client: AgentPeer) -> None:
    exec_id = uuid.uuid4().hex
    await client.call("start", exec_id=exec_id, cmd=["true"])
    for bad in ("SIGBOGUS", 0, 999, True, None):
        with pytest.raises(AgentRequestError) as err:
            await client.call("signal", exec_id=exec_id, signal=bad)
        assert err.value.code == "invalid"
    await client.call("wait", exec_id=exec_id)
    with pytest.raises(AgentRequestError) as err:
        await client.call("signal", exec_id=exec_id, signal="TERM")
    assert err.value.code == "not_running"


async def test_timeout_kills_the_process_tree(client: AgentPeer) -> None:
    t0 = time.monotonic()
    state, _, _ = await client.run(TREE, timeout=0.3)
    assert 0.3 <= time.monotonic() - t0 < 5
    assert state["exit"] == {**state["exit"], "exit_code": 137, "signal": "SIGKILL"}
    assert state["exit"]["timed_out"] is True
    wait_group_gone(state["pid"])


async def test_background_child_holding_the_pipe_does_not_block_the_exit(
    client: AgentPeer,
) -> None:
    t0 = time.monotonic()
    state, out, _ = await client.run(["sh", "-c", "sleep 30 & echo done"])
    try:
        assert time.monotonic() - t0 < 2
        assert out == b"done\n"
        assert state["exit"]["exit_code"] == 0
        assert state["exit"]["timed_out"] is False
    finally:
        os.killpg(state["pid"], signal.SIGKILL)  # the leftover sleep
