"""Finished execs are kept until acknowledged, across client connections."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from execbus.testing.agent_peer import AgentPeer, AgentRequestError, split_captures
from tests.system.agent.harness import AgentProcess


async def test_exit_is_kept_across_a_reconnect_until_ack(shared_agent: AgentProcess) -> None:
    exec_id = uuid.uuid4().hex
    first = await shared_agent.connect()
    await first.call("start", exec_id=exec_id, cmd=["sh", "-c", "sleep 0.2; echo kept"])
    await first.close()  # the client goes away while the exec runs

    second = await shared_agent.connect()
    try:
        for _ in range(200):
            listed = {e["exec_id"]: e for e in (await second.call("list"))["execs"]}
            if listed[exec_id]["state"] == "exited":
                break
            await asyncio.sleep(0.02)
        entry = listed[exec_id]
        assert entry["state"] == "exited"
        assert entry["exit"]["exit_code"] == 0
        frame = await second.request("inspect", exec_id=exec_id)
        assert split_captures(frame.header["result"], frame.payload) == (b"kept\n", b"")
        await second.call("ack", exec_id=exec_id)
        assert exec_id not in {e["exec_id"] for e in (await second.call("list"))["execs"]}
        with pytest.raises(AgentRequestError) as err:
            await second.call("ack", exec_id=exec_id)
        assert err.value.code == "not_found"
    finally:
        await second.close()


async def test_watchers_receive_exit_events(client: AgentPeer) -> None:
    await client.call("watch")
    exec_id = uuid.uuid4().hex
    await client.call("start", exec_id=exec_id, cmd=["sh", "-c", "echo a; exit 4"], meta={"m": 1})
    while True:
        frame = await client.next_event()
        if frame.header.get("exec_id") == exec_id:
            break
    event = frame.header
    assert event["event"] == "exit"
    assert event["state"] == "exited"
    assert event["meta"] == {"m": 1}
    assert event["exit"]["exit_code"] == 4
    assert split_captures(event, frame.payload) == (b"a\n", b"")


async def test_failed_starts_are_kept_and_reported(client: AgentPeer) -> None:
    await client.call("watch")
    exec_id = uuid.uuid4().hex
    result = await client.call("start", exec_id=exec_id, cmd=["no-such-command-xyz"])
    assert result["state"] == "failed"
    assert result["new"] is True
    while True:
        frame = await client.next_event()
        if frame.header.get("exec_id") == exec_id:
            break
    assert frame.header["event"] == "exit"
    assert frame.header["error"]["code"] == "command_not_found"
    again = await client.call("start", exec_id=exec_id, cmd=["no-such-command-xyz"])
    assert again["new"] is False
    assert again["state"] == "failed"
    await client.call("ack", exec_id=exec_id)
